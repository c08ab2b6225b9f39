#include "manifest.h"

#include <openssl/evp.h>
#include <sys/stat.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "contract.h"
#include "error.h"

namespace flash_edge {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int64_t kMaxDim = 1 << 16;
constexpr int64_t kMaxElements = int64_t{1} << 28;
constexpr uintmax_t kMaxManifestBytes = 64u << 20;
constexpr size_t kMaxFiles = 100000;
const char* const kCodeSuffixes[] = {".py", ".pyc", ".pyo", ".pyd", ".so", ".dylib", ".dll",
                                     ".pkl", ".pickle", ".pt", ".pth", ".ckpt"};

[[noreturn]] void fail(const std::string& key, const std::string& problem) {
  throw Error("manifest key " + key + " " + problem);
}

std::string type_name(const json& v) { return v.type_name(); }

const json& obj(const json& v, const std::string& key) {
  if (!v.is_object()) fail(key, std::string("must be a JSON object, got ") + type_name(v));
  return v;
}

const json& field(const json& d, const std::string& name, const std::string& key) {
  auto it = d.find(name);
  if (it == d.end()) fail(key.empty() ? name : key + "." + name, "is missing");
  return *it;
}

void only(const json& d, const std::string& key, const std::vector<std::string>& allowed) {
  for (auto it = d.begin(); it != d.end(); ++it)
    if (std::find(allowed.begin(), allowed.end(), it.key()) == allowed.end())
      fail(key, "has unknown key '" + it.key().substr(0, 80) + "'");
}

int64_t integer(const json& v, const std::string& key, int64_t low, int64_t high) {
  if (!v.is_number_integer()) fail(key, std::string("must be an integer, got ") + type_name(v));
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    fail(key, "must be from " + std::to_string(low) + " to " + std::to_string(high));
  int64_t x = v.get<int64_t>();
  if (x < low || x > high)
    fail(key, "must be from " + std::to_string(low) + " to " + std::to_string(high) + ", got " + std::to_string(x));
  return x;
}

double number(const json& v, const std::string& key, double low, double high) {
  if (!v.is_number()) fail(key, std::string("must be a number, got ") + type_name(v));
  double x = v.get<double>();
  if (!std::isfinite(x)) fail(key, "must be finite");
  if (x < low || x > high) fail(key, "is out of range");
  return x;
}

std::string string(const json& v, const std::string& key) {
  if (!v.is_string()) fail(key, std::string("must be a string, got ") + type_name(v));
  return v.get<std::string>();
}

const json& array(const json& v, const std::string& key, size_t low, size_t high) {
  if (!v.is_array()) fail(key, std::string("must be a list, got ") + type_name(v));
  if (v.size() < low || v.size() > high)
    fail(key, "must hold " + std::to_string(low) + " to " + std::to_string(high) + " items");
  return v;
}

void equal(const json& d, const std::string& name, const json& expected, const std::string& key) {
  if (field(d, name, key) != expected)
    fail(key + "." + name, "must be " + expected.dump().substr(0, 300) +
                               " (the app contract, derived from the rest of the manifest)");
}

// A normalised relative POSIX path (confine.py's relative_path).
std::string relative_path(const json& v, const std::string& key) {
  if (!v.is_string() || v.get<std::string>().empty()) fail(key, "must be a non-empty relative path");
  const std::string p = v.get<std::string>();
  bool bad = p.size() > 4096 || p.find('\\') != std::string::npos || p.find('\0') != std::string::npos ||
             p[0] == '/' || (p.size() > 1 && p[1] == ':');
  std::stringstream parts(p);
  for (std::string part; std::getline(parts, part, '/');) bad |= part.empty() || part == "." || part == "..";
  bad |= p.back() == '/';
  if (bad) fail(key, "must be a normalised path relative to the bundle (no '..', '.', leading '/', backslash or drive)");
  return p;
}

std::string real(const std::string& p) {
  char buf[PATH_MAX];
  if (!realpath(p.c_str(), buf)) return {};
  return buf;
}

// rel resolves, symbolic links included, inside root (which is already real).
void inside(const std::string& root, const std::string& rel, const std::string& key) {
  std::string target = real(root + "/" + rel);
  if (target.empty()) throw Error("bundle file " + root + "/" + rel + " is missing");
  if (target != root && target.rfind(root + "/", 0) != 0)
    fail(key, ": '" + rel + "' leads outside the bundle (through a symbolic link)");
}

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read bundle file " + path);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(in.gcount()));
  }
  unsigned char digest[32];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx, digest, &n);
  EVP_MD_CTX_free(ctx);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) out += {hex[digest[i] >> 4], hex[digest[i] & 15]};
  return out;
}

struct Files {
  std::map<std::string, std::pair<uint64_t, std::string>> table;  // rel -> (size, sha256)
  std::string listed(const json& v, const std::string& key) const {
    std::string rel = relative_path(v, key);
    if (!table.count(rel)) fail(key, "names '" + rel + "', which the manifest's files do not list");
    return rel;
  }
};

Files check_files_table(const json& files) {
  obj(files, "files");
  if (files.empty()) fail("files", "is empty: a bundle lists every file with its size and sha256");
  if (files.size() > kMaxFiles) fail("files", "lists more than " + std::to_string(kMaxFiles) + " files");
  Files out;
  for (auto it = files.begin(); it != files.end(); ++it) {
    const std::string key = "files['" + it.key().substr(0, 80) + "']";
    std::string rel = relative_path(it.key(), key);
    std::string lower = rel;
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
    for (const char* s : kCodeSuffixes) {
      std::string suffix(s);
      if (lower.size() >= suffix.size() && lower.compare(lower.size() - suffix.size(), suffix.size(), suffix) == 0)
        fail(key, "is a code or pickle file: bundles never carry code");
    }
    const json& meta = obj(it.value(), key);
    int64_t size = integer(field(meta, "size", key), key + ".size", 0, int64_t{1} << 40);
    const json& digest = field(meta, "sha256", key);
    bool ok = digest.is_string() && digest.get<std::string>().size() == 64 &&
              digest.get<std::string>().find_first_not_of("0123456789abcdef") == std::string::npos;
    if (!ok) fail(key + ".sha256", "must be 64 lower-case hex digits");
    out.table[rel] = {static_cast<uint64_t>(size), digest.get<std::string>()};
  }
  return out;
}

std::vector<TensorInfo> tensors(const json& v, const std::string& key) {
  std::vector<TensorInfo> out;
  array(v, key, 1, 64);
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string where = key + "[" + std::to_string(i) + "]";
    const json& t = obj(v[i], where);
    TensorInfo info;
    info.name = string(field(t, "name", where), where + ".name");
    const json& shape = array(field(t, "shape", where), where + ".shape", 0, 8);
    for (size_t j = 0; j < shape.size(); ++j)
      info.shape.push_back(integer(shape[j], where + ".shape[" + std::to_string(j) + "]", 1, kMaxDim));
    if (info.numel() > kMaxElements) fail(where + ".shape", "has more than 2^28 elements");
    info.dtype = string(field(t, "dtype", where), where + ".dtype");
    if (info.dtype != "float32" && info.dtype != "int64") fail(where + ".dtype", "must be float32 or int64");
    out.push_back(info);
  }
  return out;
}

TensorInfo f32(const std::string& name, std::vector<int64_t> shape) { return {name, std::move(shape), "float32"}; }

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // each <= 2^16, at most 8 of them: checked before it can overflow
  return n;
}

std::string bundle_file(const std::string& bundle, const std::string& rel) { return bundle + "/" + rel; }

namespace {

struct Text {
  int64_t clip_tokens, t5_tokens, joint, clip_dims[2], pooled_dims[2];
  bool t5;
};

Text check_text(const json& t) {
  const std::string key = "generation.text";
  only(t, key, {"clip_tokens", "t5_tokens", "joint_attention_dim", "clip_hidden_dims", "pooled_dims", "t5",
                "sequence_length", "pooled_dim"});
  Text x{};
  x.clip_tokens = integer(field(t, "clip_tokens", key), key + ".clip_tokens", 1, 512);
  x.t5_tokens = integer(field(t, "t5_tokens", key), key + ".t5_tokens", 0, 512);
  x.joint = integer(field(t, "joint_attention_dim", key), key + ".joint_attention_dim", 1, kMaxDim);
  for (const char* name : {"clip_hidden_dims", "pooled_dims"}) {
    const json& dims = array(field(t, name, key), key + "." + name, 2, 2);
    for (int i = 0; i < 2; ++i)
      (std::string(name) == "clip_hidden_dims" ? x.clip_dims : x.pooled_dims)[i] =
          integer(dims[i], key + "." + name + "[" + std::to_string(i) + "]", 1, kMaxDim);
  }
  std::string mode = string(field(t, "t5", key), key + ".t5");
  if (mode != "zeros" && mode != "encoder") fail(key + ".t5", "must be zeros or encoder");
  x.t5 = mode == "encoder";
  if (t.contains("sequence_length") && t["sequence_length"] != x.clip_tokens + x.t5_tokens)
    fail(key + ".sequence_length", "must be clip_tokens + t5_tokens");
  if (t.contains("pooled_dim") && t["pooled_dim"] != x.pooled_dims[0] + x.pooled_dims[1])
    fail(key + ".pooled_dim", "must be the sum of pooled_dims");
  if (x.clip_dims[0] + x.clip_dims[1] > x.joint) fail(key, "has CLIP widths that exceed joint_attention_dim");
  if (x.t5 && x.t5_tokens == 0) fail(key, "uses the T5 encoder with t5_tokens 0");
  return x;
}

json derived_conditioning(const Text& t) {  // contract.conditioning
  const int64_t n = t.clip_tokens, dl = t.clip_dims[0], dg = t.clip_dims[1], pl = t.pooled_dims[0],
                pg = t.pooled_dims[1];
  json hidden = json::array({{{"source", "text_encoder.hidden_states"}, {"rows", {0, n}}, {"columns", {0, dl}}},
                             {{"source", "text_encoder_2.hidden_states"}, {"rows", {0, n}}, {"columns", {dl, dl + dg}}}});
  if (t.t5)
    hidden.push_back({{"source", "text_encoder_3.hidden_states"}, {"rows", {n, n + t.t5_tokens}}, {"columns", {0, t.joint}}});
  return {{"encoder_hidden_states", {{"shape", {1, n + t.t5_tokens, t.joint}}, {"fill", 0.0}, {"blocks", hidden}}},
          {"pooled_projections",
           {{"shape", {1, pl + pg}},
            {"fill", 0.0},
            {"blocks", json::array({{{"source", "text_encoder.pooled"}, {"columns", {0, pl}}},
                                    {{"source", "text_encoder_2.pooled"}, {"columns", {pl, pl + pg}}}})}}}};
}

Conditioning to_conditioning(const json& c) {
  Conditioning out;
  out.shape = c["shape"].get<std::vector<int64_t>>();
  for (const json& b : c["blocks"]) {
    Block block;
    std::string source = b["source"];
    block.component = source.substr(0, source.find('.'));
    block.output = source.substr(source.find('.') + 1);
    if (b.contains("rows")) block.row0 = b["rows"][0], block.row1 = b["rows"][1];
    block.col0 = b["columns"][0], block.col1 = b["columns"][1];
    out.blocks.push_back(block);
  }
  return out;
}

void check_generation(const json& g0, bool v2, Manifest& m, Text& text) {
  const json& g = obj(g0, "generation");
  std::vector<std::string> keys = {"image", "latent", "sampler", "text", "tokenizers", "decode"};
  if (v2) keys.push_back("conditioning");
  only(g, "generation", keys);

  const json& image = obj(field(g, "image", "generation"), "generation.image");
  only(image, "generation.image", v2 ? std::vector<std::string>{"height", "width", "uint8"}
                                     : std::vector<std::string>{"height", "width"});
  m.height = static_cast<int>(integer(field(image, "height", "generation.image"), "generation.image.height", 8, 8192));
  m.width = static_cast<int>(integer(field(image, "width", "generation.image"), "generation.image.width", 8, 8192));
  if (v2) equal(image, "uint8", contract::kUint8, "generation.image");

  const std::string lk = "generation.latent";
  const json& lat = obj(field(g, "latent", "generation"), lk);
  std::vector<std::string> lat_keys = {"channels", "height", "width", "scaling_factor", "shift_factor",
                                       "vae_scale_factor", "patch_size"};
  if (v2) lat_keys.push_back("decoder_applies_scaling");
  only(lat, lk, lat_keys);
  m.channels = static_cast<int>(integer(field(lat, "channels", lk), lk + ".channels", 1, 256));
  m.vae_scale_factor = static_cast<int>(integer(field(lat, "vae_scale_factor", lk), lk + ".vae_scale_factor", 1, 64));
  int64_t patch = integer(field(lat, "patch_size", lk), lk + ".patch_size", 1, 16);
  for (const char* side : {"height", "width"}) {
    int64_t cells = integer(field(lat, side, lk), lk + "." + side, 1, kMaxDim);
    int64_t pixels = std::string(side) == "height" ? m.height : m.width;
    if (cells * m.vae_scale_factor != pixels || cells % patch)
      fail(lk + "." + side, "must be the image side / vae_scale_factor and a multiple of patch_size");
    (std::string(side) == "height" ? m.latent_height : m.latent_width) = static_cast<int>(cells);
  }
  number(field(lat, "scaling_factor", lk), lk + ".scaling_factor", 1e-6, 1e3);
  number(field(lat, "shift_factor", lk), lk + ".shift_factor", -1e3, 1e3);
  if (v2) equal(lat, "decoder_applies_scaling", true, lk);

  if (g.contains("decode")) {
    const json& d = obj(g["decode"], "generation.decode");
    only(d, "generation.decode", {"tile", "overlap"});
    m.decode_tile = static_cast<int>(integer(field(d, "tile", "generation.decode"), "generation.decode.tile", 1,
                                             std::min(m.latent_height, m.latent_width)));
    m.decode_overlap = static_cast<int>(
        integer(field(d, "overlap", "generation.decode"), "generation.decode.overlap", 0, m.decode_tile / 2));
  }

  const std::string sk = "generation.sampler";
  const json& s = obj(field(g, "sampler", "generation"), sk);
  std::vector<std::string> s_keys = {"sigmas", "rule", "timestep_scale", "shift", "guidance_scale", "noise",
                                     "steps", "timesteps"};
  if (v2) s_keys.insert(s_keys.end(), {"initial_noise", "update", "guidance"});
  only(s, sk, s_keys);
  const json& sigmas = array(field(s, "sigmas", sk), sk + ".sigmas", 2, 9);
  std::vector<double> sig;
  for (size_t i = 0; i < sigmas.size(); ++i)
    sig.push_back(number(sigmas[i], sk + ".sigmas[" + std::to_string(i) + "]", 0.0, 1.0));
  for (size_t i = 1; i < sig.size(); ++i)
    if (!(sig[i] < sig[i - 1])) fail(sk + ".sigmas", "must decrease strictly from at most 1 to a final 0");
  if (sig.back() != 0.0) fail(sk + ".sigmas", "must decrease strictly from at most 1 to a final 0");
  m.rule = s.contains("rule") ? string(s["rule"], sk + ".rule") : "euler";
  if (m.rule != "euler" && m.rule != "renoise") fail(sk + ".rule", "must be one of euler, renoise");
  double scale = s.contains("timestep_scale") ? number(s["timestep_scale"], sk + ".timestep_scale", 1e-3, 1e5) : 1000.0;
  if (s.contains("shift") && !s["shift"].is_null()) number(s["shift"], sk + ".shift", 1e-3, 1e3);
  m.guidance_scale = s.contains("guidance_scale") ? number(s["guidance_scale"], sk + ".guidance_scale", 0, 100) : 1.0;
  if (s.contains("noise") && string(s["noise"], sk + ".noise") != contract::kNoise)
    fail(sk + ".noise", std::string("must be ") + contract::kNoise);
  if (s.contains("steps") && integer(s["steps"], sk + ".steps", 1, 8) != static_cast<int64_t>(sig.size()) - 1)
    fail(sk + ".steps", "disagrees with the sigmas");
  if (s.contains("timesteps")) {
    const json& ts = array(s["timesteps"], sk + ".timesteps", sig.size() - 1, sig.size() - 1);
    for (size_t i = 0; i < ts.size(); ++i)
      if (std::fabs(number(ts[i], sk + ".timesteps", 0, 1e5) - sig[i] * scale) > 1e-4 * scale)
        fail(sk + ".timesteps[" + std::to_string(i) + "]", "must be sigmas[i] x timestep_scale");
  }
  if (v2) {
    equal(s, "initial_noise", contract::kInitialNoise, sk);
    equal(s, "update", m.rule == "euler" ? contract::kUpdateEuler : contract::kUpdateRenoise, sk);
    equal(s, "guidance", contract::kGuidance, sk);
  }
  for (double v : sig) m.sigmas.push_back(static_cast<float>(v));
  for (size_t i = 0; i + 1 < m.sigmas.size(); ++i) m.timesteps.push_back(m.sigmas[i] * static_cast<float>(scale));

  text = check_text(obj(field(g, "text", "generation"), "generation.text"));
  m.t5 = text.t5;

  const json& toks = obj(field(g, "tokenizers", "generation"), "generation.tokenizers");
  std::vector<std::string> wanted = {"text_encoder", "text_encoder_2"};
  if (text.t5) wanted.push_back("text_encoder_3");
  if (toks.size() != wanted.size()) fail("generation.tokenizers", "must have exactly the text encoders' tokenizers");
  for (const std::string& comp : wanted) {
    const std::string key = "generation.tokenizers." + comp;
    const json& tok = obj(field(toks, comp, "generation.tokenizers"), key);
    std::vector<std::string> allowed = {"path", "max_length", "pad_id", "vocab_size"};
    if (v2) allowed.insert(allowed.end(), {"special_prefix", "special_suffix", "truncation", "padding"});
    only(tok, key, allowed);
    TokenizerRules r;
    r.path = relative_path(field(tok, "path", key), key + ".path");
    r.max_length = static_cast<int>(integer(field(tok, "max_length", key), key + ".max_length", 1, 512));
    if (r.max_length != (comp == "text_encoder_3" ? text.t5_tokens : text.clip_tokens))
      fail(key + ".max_length", "must equal the text layout's token count");
    r.vocab_size = static_cast<int>(integer(field(tok, "vocab_size", key), key + ".vocab_size", 1, 1 << 20));
    r.pad_id = static_cast<int>(integer(field(tok, "pad_id", key), key + ".pad_id", 0, r.vocab_size - 1));
    if (v2) {
      for (const char* name : {"special_prefix", "special_suffix"}) {
        const json& ids = array(field(tok, name, key), key + "." + name, 0, 4);
        for (const json& id : ids)
          (std::string(name) == "special_prefix" ? r.prefix : r.suffix)
              .push_back(integer(id, key + "." + name, 0, r.vocab_size - 1));
      }
      if (static_cast<int>(r.prefix.size() + r.suffix.size()) >= r.max_length)
        fail(key, "leaves no room for the prompt");
      equal(tok, "truncation", contract::kTruncation, key);
      equal(tok, "padding", contract::kPadding, key);
      r.specials_known = true;
    }
    m.tokenizers[comp] = r;
  }
  json conditioning = derived_conditioning(text);
  if (v2) equal(g, "conditioning", conditioning, "generation");
  m.hidden = to_conditioning(conditioning["encoder_hidden_states"]);
  m.pooled = to_conditioning(conditioning["pooled_projections"]);
}

// The I/O a component must have (spec.py's GenerationSpec.component_spec).
std::pair<std::vector<TensorInfo>, std::vector<TensorInfo>> expected_io(const std::string& name, const Manifest& m,
                                                                        const Text& t) {
  if (name == "text_encoder" || name == "text_encoder_2") {
    int i = name == "text_encoder" ? 0 : 1;
    return {{{"input_ids", {1, t.clip_tokens}, "int64"}},
            {f32("hidden_states", {1, t.clip_tokens, t.clip_dims[i]}), f32("pooled", {1, t.pooled_dims[i]})}};
  }
  if (name == "text_encoder_3")
    return {{{"input_ids", {1, t.t5_tokens}, "int64"}}, {f32("hidden_states", {1, t.t5_tokens, t.joint})}};
  if (name == "transformer")
    return {{f32("latent", m.latent_shape()), f32("timestep", {1}),
             f32("encoder_hidden_states", {1, t.clip_tokens + t.t5_tokens, t.joint}),
             f32("pooled_projections", {1, t.pooled_dims[0] + t.pooled_dims[1]})},
            {f32("velocity", m.latent_shape())}};
  if (m.decode_tile) {
    int64_t c = m.decode_tile, p = c * m.vae_scale_factor;
    return {{f32("latent", {1, m.channels, c, c})}, {f32("image", {1, 3, p, p})}};
  }
  return {{f32("latent", m.latent_shape())}, {f32("image", {1, 3, m.height, m.width})}};
}

std::string dump(const std::vector<TensorInfo>& ts) {
  std::string s;
  for (const auto& t : ts) {
    s += (s.empty() ? "" : ", ") + t.name + " [";
    for (size_t i = 0; i < t.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
    s += "] " + t.dtype;
  }
  return s;
}

Component check_component(const std::string& name, const json& e, const Manifest& m, const Text& text,
                          const Files& files) {
  const std::string key = "components." + name;
  obj(e, key);
  only(e, key, {"target", "precision", "path", "files", "inputs", "outputs", "options"});
  Component c;
  c.target = string(field(e, "target", key), key + ".target");
  if (c.target != "executorch")
    throw Error("the native runner runs ExecuTorch bundles (flash-export --target executorch); this bundle's " +
                name + " is a " + c.target.substr(0, 40) + " artifact");
  c.precision = string(field(e, "precision", key), key + ".precision");
  const json& owned_json = array(field(e, "files", key), key + ".files", 1, kMaxFiles);
  std::set<std::string> owned;
  for (size_t i = 0; i < owned_json.size(); ++i) owned.insert(files.listed(owned_json[i], key + ".files"));
  if (owned.size() != owned_json.size()) fail(key + ".files", "lists a file twice");
  c.inputs = tensors(field(e, "inputs", key), key + ".inputs");
  c.outputs = tensors(field(e, "outputs", key), key + ".outputs");
  auto [want_in, want_out] = expected_io(name, m, text);
  if (c.inputs != want_in) fail(key + ".inputs", "must be " + dump(want_in) + ": shapes follow generation");
  if (c.outputs != want_out) fail(key + ".outputs", "must be " + dump(want_out) + ": shapes follow generation");
  const json& options = e.contains("options") ? obj(e["options"], key + ".options") : json::object();
  if (options.contains("module_api")) {
    const json& api = obj(options["module_api"], key + ".options.module_api");
    if (api.contains("method") && api["method"] != "forward") fail(key + ".options.module_api.method", "must be forward");
  }
  auto program_path = [&](const json& v, const std::string& where) {
    std::string rel = relative_path(v, where);
    if (!owned.count(rel)) fail(where, "('" + rel + "') must be one of the component's files");
    return rel;
  };
  auto data_file = [&](const json& p, const std::string& where) {
    return p.contains("data_file") && !p["data_file"].is_null() ? program_path(p["data_file"], where + ".data_file")
                                                                 : std::string();
  };
  auto identify = [&](Program p) {  // sha256 prefixes: 128 bits each, short enough for a cache file name
    p.content_id = files.table.at(p.path).second.substr(0, 32);
    if (!p.data_file.empty()) p.content_id += "-" + files.table.at(p.data_file).second.substr(0, 32);
    return p;
  };
  if (options.contains("chunks") && !options["chunks"].is_null()) {
    const json& chunks = array(options["chunks"], key + ".options.chunks", 1, 256);
    std::set<std::string> known;
    for (const auto& t : c.inputs) known.insert(t.name);
    for (size_t i = 0; i < chunks.size(); ++i) {
      const std::string where = key + ".options.chunks[" + std::to_string(i) + "]";
      const json& ch = obj(chunks[i], where);
      Program p{program_path(field(ch, "path", where), where + ".path"), data_file(ch, where),
                tensors(field(ch, "inputs", where), where + ".inputs"), tensors(field(ch, "outputs", where), where + ".outputs"), ""};
      for (const auto& t : p.inputs)
        if (!known.count(t.name))
          throw Error("manifest key " + where + " takes " + t.name +
                      ", which neither the component's inputs nor an earlier chunk provide: the chunk list is broken");
      for (const auto& t : p.outputs) known.insert(t.name);
      c.programs.push_back(identify(p));
    }
    for (const auto& t : c.outputs)
      if (!known.count(t.name)) throw Error("no chunk of " + name + " writes its output " + t.name);
  } else {
    c.programs.push_back(identify({program_path(field(e, "path", key), key + ".path"),
                                   data_file(options, key + ".options"), c.inputs, c.outputs, ""}));
  }
  return c;
}

void check_bundle_files(const std::string& root, const Files& files, bool hashes) {
  for (const auto& [rel, meta] : files.table) {
    inside(root, rel, "files['" + rel + "']");
    const std::string f = root + "/" + rel;
    struct stat st;
    if (stat(f.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) throw Error("bundle file " + f + " is missing");
    if (static_cast<uint64_t>(st.st_size) != meta.first)
      throw Error("bundle file " + f + " has " + std::to_string(st.st_size) + " bytes, the manifest says " +
                  std::to_string(meta.first) + ": it is truncated or was changed");
    if (hashes && sha256_file(f) != meta.second)
      throw Error("bundle file " + f + " does not match its sha256 in the manifest: it is corrupt or was changed after export");
  }
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->is_directory(ec) && !it->is_symlink(ec)) continue;
    std::string rel = fs::relative(it->path(), root, ec).generic_string();
    if (rel == "manifest.json" || it->path().filename() == ".DS_Store") continue;
    if (!files.table.count(rel))
      throw Error("bundle " + root + " holds what its manifest does not list: " + rel +
                  "; a bundle carries only the files its manifest lists");
  }
  if (ec) throw Error("cannot list bundle " + root + ": " + ec.message());
}

}  // namespace

Manifest read_manifest(const std::string& bundle, bool verify_hashes) {
  const std::string root = real(bundle);
  struct stat st;
  if (root.empty() || stat(root.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw Error("bundle " + bundle + " does not exist or is not a directory");
  const std::string mf = root + "/manifest.json";
  if (stat(mf.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    throw Error(bundle + " is not a flash-edge bundle: it has no manifest.json");
  inside(root, "manifest.json", "manifest.json");
  if (static_cast<uintmax_t>(st.st_size) > kMaxManifestBytes)
    throw Error(mf + " is larger than 64 MB: not a flash-edge manifest");
  std::ifstream in(mf, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(mf + " is not valid JSON: the bundle is corrupt, export it again");
  }
  if (!doc.is_object() || !doc.contains("format") || doc["format"] != "flash-edge-bundle")
    throw Error(mf + " is not a flash-edge manifest");
  const json& version = doc.contains("format_version") ? doc["format_version"] : json();
  if (!version.is_number_integer() || (version != 1 && version != 2))
    throw Error("bundle " + bundle + " has format version " + version.dump().substr(0, 20) +
                "; this runner reads versions 1 and 2: export the bundle again");
  Manifest m;
  m.format_version = version.get<int>();
  try {
    Text text_layout{};
    check_generation(field(doc, "generation", ""), m.format_version >= 2, m, text_layout);
    if (m.t5) throw Error("the native runner does not run the T5 encoder yet: export with --no-t5");
    Files files = check_files_table(field(doc, "files", ""));
    const json& components = obj(field(doc, "components", ""), "components");
    const std::vector<std::string> names = {"text_encoder", "text_encoder_2", "transformer", "vae_decoder"};
    if (components.size() != names.size())
      fail("components", "must have exactly text_encoder, text_encoder_2, transformer, vae_decoder");
    for (const std::string& name : names)
      m.components[name] = check_component(name, field(components, name, "components"), m, text_layout, files);
    for (const auto& [comp, tok] : m.tokenizers)
      for (const char* f : {"/tokenizer.json", "/vocab.json", "/merges.txt"})
        files.listed(tok.path + f, "generation.tokenizers." + comp + ".path");
    check_bundle_files(root, files, verify_hashes);
  } catch (const Error& e) {
    throw Error(mf + ": " + e.what());
  }
  return m;
}

}  // namespace flash_edge
