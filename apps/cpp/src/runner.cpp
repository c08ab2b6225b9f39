#include "runner.h"

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
#include "program.h"
#include "tokenizer.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace flash_edge {
namespace {

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
  if (chunk_arena_sizes_.empty())
    chunk_arena_sizes_ = largest_planned_buffers(bundle_, manifest_.components.at("transformer").programs);
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
