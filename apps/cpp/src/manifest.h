// A bundle's manifest, read and validated as the Python loader does (flash_edge/manifest.py, bundle.py):
// format and version, every number that sizes an allocation in range, every path relative, listed in `files`
// and resolving inside the bundle, every file's size and sha256, nothing unlisted in the folder, and the shapes
// of every component equal to what `generation` implies. What passes can be run without further checks.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace flash_edge {

struct TensorInfo {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;  // float32 | int64
  int64_t numel() const;
  bool operator==(const TensorInfo& o) const { return name == o.name && shape == o.shape && dtype == o.dtype; }
};

struct Program {  // one .pte: an unchunked component, or one chunk
  std::string path;
  std::string data_file;  // its .ptd (weights past 2 GiB), or empty
  std::vector<TensorInfo> inputs, outputs;
  std::string content_id;  // the manifest's sha256 of the .pte (and of the .ptd): what its weight cache is keyed by
};

struct Component {
  std::string target, precision;
  std::vector<TensorInfo> inputs, outputs;
  std::vector<Program> programs;  // run in order, each reading the component's inputs and earlier outputs
};

struct TokenizerRules {
  std::string path;  // folder inside the bundle
  int max_length = 0, pad_id = 0, vocab_size = 0;
  std::vector<int64_t> prefix, suffix;  // special ids around the prompt's; format 1: from tokenizer.json
  bool specials_known = false;
};

struct Block {  // one text-encoder output copied into a conditioning tensor
  std::string component, output;
  int64_t row0 = 0, row1 = 1, col0 = 0, col1 = 0;  // [start, stop); pooled blocks span one row
};

struct Conditioning {
  std::vector<int64_t> shape;
  std::vector<Block> blocks;
};

struct Manifest {
  int format_version = 0;
  int height = 0, width = 0;
  int channels = 0, latent_height = 0, latent_width = 0, vae_scale_factor = 0;
  std::vector<float> sigmas, timesteps;
  std::string rule;  // euler | renoise
  double guidance_scale = 1.0;
  bool t5 = false;
  int decode_tile = 0, decode_overlap = 0;  // latent cells; tile 0: one pass
  std::map<std::string, TokenizerRules> tokenizers;
  Conditioning hidden, pooled;  // encoder_hidden_states, pooled_projections
  std::map<std::string, Component> components;

  int steps() const { return static_cast<int>(sigmas.size()) - 1; }
  std::vector<int64_t> latent_shape() const { return {1, channels, latent_height, latent_width}; }
};

// Reads <bundle>/manifest.json and checks the bundle against it (hashes too unless verify_hashes is false).
Manifest read_manifest(const std::string& bundle, bool verify_hashes);

// <bundle>/<rel> for a path the manifest validated (relative, normalised, inside).
std::string bundle_file(const std::string& bundle, const std::string& rel);

}  // namespace flash_edge
