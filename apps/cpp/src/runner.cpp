#include "runner.h"

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/backend/backend_options_map.h>
#include <executorch/runtime/backend/options.h>
#include <executorch/runtime/platform/platform.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>

#include "error.h"
#include "noise.h"
#include "tokenizer.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace flash_edge {
namespace {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::runtime::EValue;

// A named tensor's data: float32, or int64 for input_ids.
struct Data {
  std::vector<float> f;
  std::vector<int64_t> i;
};
using State = std::map<std::string, Data>;

int64_t peak_rss() {  // VmHWM in bytes
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}

void reset_peak_rss() {  // "5" resets VmHWM to the current RSS (Linux 4.0+); elsewhere the peak stays cumulative
  std::ofstream clear("/proc/self/clear_refs");
  if (clear) clear << "5";
}

class Stage {  // times a stage and records its peak resident memory
 public:
  Stage(std::map<std::string, StageStats>& out, const std::string& name)
      : out_(out), name_(name), start_(std::chrono::steady_clock::now()) {
    reset_peak_rss();
  }
  ~Stage() {
    out_[name_] = {std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(), peak_rss()};
  }

 private:
  std::map<std::string, StageStats>& out_;
  std::string name_;
  std::chrono::steady_clock::time_point start_;
};

// ExecuTorch's log: errors only (its start-up info lines would break one-line errors and clutter stderr);
// FLASH_EDGE_EXECUTORCH_LOG=1 passes everything through.
void emit_log(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*, size_t line,
              const char* message, size_t length) {
  static const bool all = std::getenv("FLASH_EDGE_EXECUTORCH_LOG") != nullptr;
  if (all || level == kError || level == kFatal)
    std::fprintf(stderr, "executorch %c %s:%zu] %.*s\n", static_cast<char>(level), filename, line,
                 static_cast<int>(length), message);
}

void quiet_executorch_log() {
  static std::once_flag once;
  std::call_once(once, [] {
    executorch::runtime::register_pal(executorch::runtime::PalImpl::create(emit_log, __FILE__));
  });
}

// A released program's memory goes back to the C heap, and glibc's heap keeps much of it; hand its free pages back
// to the OS (as flash_edge/memory.py does after a release), so the next stage starts from what is in use.
void return_freed_memory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

const char* const kCacheSuffix = ".xnnpack";  // one file per program: <cache dir>/<content id>.xnnpack

void check_finite(const std::vector<float>& v, const std::string& what) {
  for (float x : v)
    if (!std::isfinite(x))
      throw Error("the " + what + " returned non-finite values (NaN or inf): the model or its export is broken");
}

// tiling.py's blend weights along one axis.
std::vector<float> ramp(int pixels, int ramp_px, bool before, bool after) {
  std::vector<float> w(pixels, 1.0f);
  for (int i = 0; i < pixels; ++i) {
    float x = static_cast<float>(i) + 0.5f;
    if (ramp_px > 0 && before) w[i] = std::min(w[i], x / static_cast<float>(ramp_px));
    if (ramp_px > 0 && after) w[i] = std::min(w[i], (static_cast<float>(pixels) - x) / static_cast<float>(ramp_px));
  }
  return w;
}

std::vector<int> tile_starts(int size, int tile, int overlap) {
  if (tile >= size) return {0};
  std::vector<int> starts;
  for (int s = 0; s < size - tile; s += tile - overlap) starts.push_back(s);
  starts.push_back(size - tile);
  return starts;
}

}  // namespace

// One set of memory-planned buffers (activations) for programs that run one after another, each sized to the
// largest program's: a transformer's chunks share it instead of holding one each. Safe because a program's
// activations only matter during its own run: its inputs are copied in when it starts and its outputs copied out
// (Loaded::run) before the next program runs.
class SharedArena {
 public:
  explicit SharedArena(const std::vector<size_t>& sizes) {
    for (size_t size : sizes) {
      buffers_.emplace_back(new uint8_t[std::max<size_t>(size, 1)]);  // uninitialised: pages are touched on use
      spans_.emplace_back(buffers_.back().get(), size);
    }
  }

  // The planned memory for one program (its method's buffer sizes), over the shared buffers.
  std::unique_ptr<executorch::runtime::HierarchicalAllocator> allocator_for(const executorch::runtime::MethodMeta& meta,
                                                                             const std::string& name) {
    const size_t count = meta.num_memory_planned_buffers();
    bool fits = count <= spans_.size();
    for (size_t b = 0; fits && b < count; ++b) {
      auto size = meta.memory_planned_buffer_size(b);
      fits = size.ok() && static_cast<size_t>(size.get()) <= spans_[b].size();
    }
    if (!fits) throw Error(name + " needs more activation memory than its chunks' shared buffers were sized for");
    return std::make_unique<executorch::runtime::HierarchicalAllocator>(
        executorch::runtime::Span<executorch::runtime::Span<uint8_t>>(spans_.data(), count));
  }

 private:
  std::vector<std::unique_ptr<uint8_t[]>> buffers_;
  std::vector<executorch::runtime::Span<uint8_t>> spans_;
};

// One loaded .pte program (memory-mapped), run with named inputs from `state`, writing its named outputs. With a
// cache file, XNNPACK's packed weights are read from it (written on the first load) instead of packed again; with
// an arena, its activations live there.
class Loaded {
 public:
  Loaded(const std::string& bundle, const std::string& name, const Program& program, const std::string& cache_file,
         std::shared_ptr<SharedArena> arena)
      : name_(name),
        program_(program),
        arena_(std::move(arena)),
        module_(program.data_file.empty()
                    ? std::make_unique<Module>(bundle_file(bundle, program.path), Module::LoadMode::Mmap)
                    : std::make_unique<Module>(bundle_file(bundle, program.path), bundle_file(bundle, program.data_file),
                                               Module::LoadMode::Mmap)) {
    if (arena_) {
      auto meta = module_->method_meta("forward");
      if (!meta.ok())
        throw Error("executorch cannot read " + bundle_file(bundle, program.path) + " (error " +
                    std::to_string(static_cast<int>(meta.error())) + ")");
      planned_ = arena_->allocator_for(meta.get(), name);
    }
    executorch::runtime::Error error;
    executorch::runtime::HierarchicalAllocator* planned = planned_.get();
    if (cache_file.empty()) {
      error = module_->load_method("forward", planned);
    } else {  // the XNNPACK backend's per-program load options (a runtime spec); other backends ignore them
      executorch::runtime::BackendOptions<2> xnnpack;
      xnnpack.set_option("weight_cache_enabled", true);
      xnnpack.set_option("packed_cache_path", cache_file.c_str());
      executorch::runtime::LoadBackendOptionsMap options;
      options.set_options("XnnpackBackend", xnnpack.view());
      error = module_->load_method("forward", planned, nullptr, &options);
    }
    if (error != executorch::runtime::Error::Ok)
      throw Error("executorch cannot load " + bundle_file(bundle, program.path) + " (error " +
                  std::to_string(static_cast<int>(error)) + ")");
  }

  void run(State& state) {
    std::vector<executorch::extension::TensorPtr> tensors;
    std::vector<EValue> inputs;
    for (const TensorInfo& t : program_.inputs) {
      Data& d = state.at(t.name);
      std::vector<executorch::aten::SizesType> sizes(t.shape.begin(), t.shape.end());
      tensors.push_back(t.dtype == "int64"
                            ? executorch::extension::from_blob(d.i.data(), sizes, ScalarType::Long)
                            : executorch::extension::from_blob(d.f.data(), sizes, ScalarType::Float));
      inputs.emplace_back(*tensors.back());
    }
    auto result = module_->forward(inputs);
    if (!result.ok())
      throw Error(name_ + " failed to run (executorch error " + std::to_string(static_cast<int>(result.error())) +
                  "): the artifact does not match its manifest or is broken");
    const auto& outputs = result.get();
    if (outputs.size() != program_.outputs.size())
      throw Error(name_ + " returned " + std::to_string(outputs.size()) + " outputs, the manifest says " +
                  std::to_string(program_.outputs.size()));
    for (size_t k = 0; k < outputs.size(); ++k) {
      const TensorInfo& want = program_.outputs[k];
      if (!outputs[k].isTensor()) throw Error(name_ + " returned a non-tensor for " + want.name);
      const auto& tensor = outputs[k].toTensor();
      if (tensor.scalar_type() != ScalarType::Float || tensor.numel() != want.numel() ||
          tensor.dim() != static_cast<ssize_t>(want.shape.size()))
        throw Error(name_ + " returned " + want.name + " of another shape or type than the manifest says");
      for (size_t j = 0; j < want.shape.size(); ++j)
        if (tensor.size(static_cast<ssize_t>(j)) != want.shape[j])
          throw Error(name_ + " returned " + want.name + " of another shape than the manifest says");
      const float* p = tensor.const_data_ptr<float>();
      state[want.name].f.assign(p, p + tensor.numel());
    }
  }

 private:
  std::string name_;
  Program program_;
  std::shared_ptr<SharedArena> arena_;  // these two outlive module_ (declared before it)
  std::unique_ptr<executorch::runtime::HierarchicalAllocator> planned_;
  std::unique_ptr<Module> module_;
};

struct Runner::Conditioning {
  std::vector<float> hidden, pooled;
};

Runner::Runner(const std::string& bundle, RunnerOptions options)
    : bundle_(bundle), options_(options), manifest_(read_manifest(bundle, options.verify_hashes)) {
  quiet_executorch_log();
  set_weight_cache(options.weight_cache_dir);
  for (const auto& [component, rules] : manifest_.tokenizers)
    tokenizers_[component] = std::make_unique<ClipTokenizer>(bundle_file(bundle_, rules.path));
  for (const auto& [component, rules] : manifest_.tokenizers) {
    if (!rules.specials_known) continue;  // format 2: the manifest's special ids must be the tokenizer's
    const auto& found = tokenizers_[component]->post_processor_specials();
    if (found.first != rules.prefix || found.second != rules.suffix)
      throw Error(bundle_file(bundle_, rules.path) + "/tokenizer.json adds other special ids than the manifest says: "
                  "the tokenizer does not belong to this bundle");
  }
}

Runner::~Runner() = default;

Memory parse_memory(const std::string& policy) {
  if (policy == "fast") return Memory::Fast;
  if (policy == "low") return Memory::Low;
  if (policy == "stream") return Memory::Stream;
  throw Error("unknown memory policy '" + policy.substr(0, 40) + "': choose fast, low or stream");
}

void Runner::set_memory(Memory memory) {
  options_.memory = memory;
  if (memory != Memory::Fast) resident_.clear();
}

void Runner::set_weight_cache(const std::string& dir) {
  if (!dir.empty()) {
    if (!options_.verify_hashes)
      throw Error("the weight cache needs the bundle's hashes verified: its files are named by the programs' sha256 "
                  "in the manifest, which only a verified bundle vouches for");
    // ExecuTorch takes the path as a backend option of at most 255 bytes: a longer one would be cut, not refused
    size_t longest = 0;
    for (const auto& [name, component] : manifest_.components)
      for (const Program& program : component.programs) longest = std::max(longest, program.content_id.size());
    const size_t limit = executorch::runtime::kMaxOptionValueLength - 1;
    if (dir.size() + 1 + longest + std::strlen(kCacheSuffix) > limit)
      throw Error("weight cache directory path is too long (" + std::to_string(dir.size()) + " bytes): a cache file's "
                  "path must fit in " + std::to_string(limit) + " bytes (ExecuTorch's limit for a backend option), and "
                  "its name takes " + std::to_string(1 + longest + std::strlen(kCacheSuffix)));
    struct stat info {};
    if (::stat(dir.c_str(), &info) != 0 || !S_ISDIR(info.st_mode))
      throw Error("weight cache directory " + dir + " does not exist or is not a directory");
    if (::access(dir.c_str(), W_OK) != 0) throw Error("weight cache directory " + dir + " is not writable");
  }
  options_.weight_cache_dir = dir;
}

std::shared_ptr<Loaded> Runner::load(const std::string& name, const Program& program,
                                     std::shared_ptr<SharedArena> arena) {
  auto kept = resident_.find(name);
  if (kept != resident_.end()) return kept->second;
  const std::string cache =
      options_.weight_cache_dir.empty() ? "" : options_.weight_cache_dir + "/" + program.content_id + kCacheSuffix;
  auto loaded = std::make_shared<Loaded>(bundle_, name, program, cache, std::move(arena));
  if (options_.memory == Memory::Fast) resident_[name] = loaded;
  return loaded;
}

std::vector<int64_t> Runner::tokenize(const std::string& component, const std::string& prompt) const {
  const TokenizerRules& rules = manifest_.tokenizers.at(component);
  const ClipTokenizer& tok = *tokenizers_.at(component);
  const auto& specials = tok.post_processor_specials();
  return fit_to_rules(tok.encode(prompt), rules, rules.specials_known ? rules.prefix : specials.first,
                      rules.specials_known ? rules.suffix : specials.second);
}

Runner::Conditioning Runner::encode(const std::string& prompt) {
  State outputs;  // "component.output" -> data
  for (const char* component : {"text_encoder", "text_encoder_2"}) {
    const Component& c = manifest_.components.at(component);
    State state;
    state["input_ids"].i = tokenize(component, prompt);
    load(component, c.programs.at(0))->run(state);  // released right after it unless kept (fast)
    for (const TensorInfo& t : c.outputs) outputs[std::string(component) + "." + t.name] = std::move(state[t.name]);
  }
  auto assemble = [&](const flash_edge::Conditioning& layout) {
    int64_t rows = layout.shape.size() == 3 ? layout.shape[1] : 1, cols = layout.shape.back();
    std::vector<float> out(static_cast<size_t>(rows * cols), 0.0f);
    for (const Block& b : layout.blocks) {
      const std::vector<float>& src = outputs.at(b.component + "." + b.output).f;
      int64_t width = b.col1 - b.col0;
      for (int64_t r = b.row0; r < b.row1; ++r)
        std::copy(src.begin() + (r - b.row0) * width, src.begin() + (r - b.row0 + 1) * width,
                  out.begin() + r * cols + b.col0);
    }
    return out;
  };
  return {assemble(manifest_.hidden), assemble(manifest_.pooled)};
}

std::shared_ptr<SharedArena> Runner::chunk_arena() {
  if (auto live = chunk_arena_.lock()) return live;  // the resident chunks' (fast)
  const Component& transformer = manifest_.components.at("transformer");
  if (chunk_arena_sizes_.empty())
    for (const Program& program : transformer.programs) {
      Module module(bundle_file(bundle_, program.path), Module::LoadMode::Mmap);
      auto meta = module.method_meta("forward");
      if (!meta.ok())
        throw Error("executorch cannot read " + bundle_file(bundle_, program.path) + " (error " +
                    std::to_string(static_cast<int>(meta.error())) + ")");
      const size_t count = meta->num_memory_planned_buffers();
      if (chunk_arena_sizes_.size() < count) chunk_arena_sizes_.resize(count, 0);
      for (size_t b = 0; b < count; ++b) {
        auto size = meta->memory_planned_buffer_size(b);
        if (!size.ok()) throw Error("executorch cannot size " + bundle_file(bundle_, program.path) + "'s buffers");
        chunk_arena_sizes_[b] = std::max(chunk_arena_sizes_[b], static_cast<size_t>(size.get()));
      }
    }
  auto arena = std::make_shared<SharedArena>(chunk_arena_sizes_);
  chunk_arena_ = arena;
  return arena;
}

std::vector<float> Runner::denoise(const Conditioning& cond, const Conditioning* uncond, uint64_t seed) {
  const Manifest& m = manifest_;
  const Component& transformer = m.components.at("transformer");
  std::vector<int64_t> shape = m.latent_shape();
  size_t count = static_cast<size_t>(shape[1] * shape[2] * shape[3]);
  std::vector<float> x(count), fresh(count);
  gaussian_noise(seed, 0, x.data(), count);

  std::vector<std::shared_ptr<Loaded>> chunks;  // loaded for the whole loop unless streamed
  auto chunk_name = [&](size_t k) {
    return transformer.programs.size() > 1 ? "transformer.chunk" + std::to_string(k) : std::string("transformer");
  };
  const bool stream = options_.memory == Memory::Stream;
  std::shared_ptr<SharedArena> arena = transformer.programs.size() > 1 ? chunk_arena() : nullptr;
  if (!stream)
    for (size_t k = 0; k < transformer.programs.size(); ++k)
      chunks.push_back(load(chunk_name(k), transformer.programs[k], arena));

  auto velocity = [&](const std::vector<float>& latent, float t, const Conditioning& c) {
    State state;
    state["latent"].f = latent;
    state["timestep"].f = {t};
    state["encoder_hidden_states"].f = c.hidden;
    state["pooled_projections"].f = c.pooled;
    for (size_t k = 0; k < transformer.programs.size(); ++k) {
      // streamed: loaded for this run and released right after it
      (stream ? load(chunk_name(k), transformer.programs[k], arena) : chunks[k])->run(state);
    }
    return std::move(state["velocity"].f);
  };

  const std::vector<float>& s = m.sigmas;
  for (int i = 0; i < m.steps(); ++i) {
    std::vector<float> v = velocity(x, m.timesteps[i], cond);
    if (uncond) {
      std::vector<float> vu = velocity(x, m.timesteps[i], *uncond);
      const float g = static_cast<float>(m.guidance_scale);
      for (size_t j = 0; j < count; ++j) v[j] = vu[j] + g * (v[j] - vu[j]);
    }
    check_finite(v, "transformer (step " + std::to_string(i + 1) + ")");
    if (m.rule == "euler") {
      const float d = s[i + 1] - s[i];
      for (size_t j = 0; j < count; ++j) x[j] = x[j] + d * v[j];
    } else {  // renoise: x0, then fresh noise of stream i + 1 at sigma_{i+1}
      gaussian_noise(seed, static_cast<uint64_t>(i) + 1, fresh.data(), count);
      const float keep = 1.0f - s[i + 1];
      for (size_t j = 0; j < count; ++j) {
        const float x0 = x[j] - s[i] * v[j];
        x[j] = keep * x0 + s[i + 1] * fresh[j];
      }
    }
  }
  return x;
}

std::vector<float> Runner::decode(const std::vector<float>& latent) {
  const Manifest& m = manifest_;
  std::shared_ptr<Loaded> loaded = load("vae_decoder", m.components.at("vae_decoder").programs.at(0));
  Loaded& decoder = *loaded;
  const int c = m.channels, h = m.latent_height, w = m.latent_width, f = m.vae_scale_factor;
  if (!m.decode_tile) {
    State state;
    state["latent"].f = latent;
    decoder.run(state);
    return std::move(state["image"].f);
  }
  const int t = m.decode_tile, o = m.decode_overlap, H = h * f, W = w * f;
  const int th = std::min(t, h) * f, tw = std::min(t, w) * f;
  std::vector<int> ys = tile_starts(h, t, o), xs = tile_starts(w, t, o);
  std::vector<float> image(static_cast<size_t>(3) * H * W, 0.0f), weights(static_cast<size_t>(H) * W, 0.0f);
  for (size_t iy = 0; iy < ys.size(); ++iy) {
    std::vector<float> wy = ramp(th, o * f, iy > 0, iy + 1 < ys.size());
    for (size_t ix = 0; ix < xs.size(); ++ix) {
      std::vector<float> wx = ramp(tw, o * f, ix > 0, ix + 1 < xs.size());
      State state;
      std::vector<float>& tile = state["latent"].f;
      tile.resize(static_cast<size_t>(c) * t * t);
      for (int ch = 0; ch < c; ++ch)
        for (int r = 0; r < t; ++r)
          std::copy_n(latent.begin() + (static_cast<size_t>(ch) * h + ys[iy] + r) * w + xs[ix], t,
                      tile.begin() + (static_cast<size_t>(ch) * t + r) * t);
      decoder.run(state);
      const std::vector<float>& piece = state["image"].f;
      for (int ch = 0; ch < 3; ++ch)
        for (int r = 0; r < th; ++r)
          for (int col = 0; col < tw; ++col) {
            const float wxy = wy[r] * wx[col];
            image[(static_cast<size_t>(ch) * H + ys[iy] * f + r) * W + xs[ix] * f + col] +=
                piece[(static_cast<size_t>(ch) * th + r) * tw + col] * wxy;
            if (ch == 0) weights[static_cast<size_t>(ys[iy] * f + r) * W + xs[ix] * f + col] += wxy;
          }
    }
  }
  for (int ch = 0; ch < 3; ++ch)
    for (size_t p = 0; p < weights.size(); ++p) image[ch * weights.size() + p] /= weights[p];
  return image;
}

Image Runner::generate(const std::string& prompt, uint64_t seed, const std::string& negative_prompt) {
  bool blank = prompt.find_first_not_of(" \t\n\r\f\v") == std::string::npos;
  if (blank) throw Error("prompt is empty: describe the image to generate");
  stages_.clear();
  const bool releases = options_.memory != Memory::Fast;
  Conditioning cond, uncond;
  {
    Stage stage(stages_, "encode");
    cond = encode(prompt);
    if (manifest_.guidance_scale > 1) uncond = encode(negative_prompt);
  }
  if (releases) return_freed_memory();
  std::vector<float> latent;
  {
    Stage stage(stages_, "denoise");
    latent = denoise(cond, manifest_.guidance_scale > 1 ? &uncond : nullptr, seed);
  }
  if (releases) return_freed_memory();
  std::vector<float> pixels;
  {
    Stage stage(stages_, "decode");
    pixels = decode(latent);
    check_finite(pixels, "VAE decoder");
  }
  if (releases) return_freed_memory();
  Image image{manifest_.height, manifest_.width, {}};
  const size_t plane = static_cast<size_t>(image.height) * image.width;
  image.rgb.resize(plane * 3);
  for (size_t p = 0; p < plane; ++p)
    for (int ch = 0; ch < 3; ++ch) {  // uint8: round_half_even(clamp(x, 0, 1) * 255) in float32
      float v = std::min(1.0f, std::max(0.0f, pixels[ch * plane + p])) * 255.0f;
      image.rgb[p * 3 + ch] = static_cast<uint8_t>(std::nearbyint(v));  // the default rounding: half to even
    }
  return image;
}

}  // namespace flash_edge
