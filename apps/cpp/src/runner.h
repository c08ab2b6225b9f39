// A bundle run end to end over ExecuTorch's C++ runtime (the runtime Android's org.pytorch.executorch.Module wraps),
// by the README's app contract: tokenize, encode, condition, denoise, decode, round to 8 bits.
//
// Memory: every program is loaded with Module::LoadMode::Mmap just before its stage and destroyed right after it
// (the text encoders one after the other, the transformer's chunks for the denoising loop or, with
// stream_chunks, each chunk just for its own run, the decoder for the decode), so at most one stage's weights
// are resident, and they are paged in from the file rather than copied.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "manifest.h"

namespace flash_edge {

class ClipTokenizer;

struct RunnerOptions {
  bool verify_hashes = true;
  int threads = 0;  // ExecuTorch's CPU thread pool; 0 keeps its default (the performance cores)
  bool stream_chunks = false;
};

struct StageStats {
  double seconds = 0;
  int64_t peak_rss = 0;  // bytes, from the OS (VmHWM, reset at the stage's start where the kernel allows)
};

struct Image {
  int height = 0, width = 0;
  std::vector<uint8_t> rgb;  // height x width x 3
};

class Runner {
 public:
  Runner(const std::string& bundle, RunnerOptions options);
  ~Runner();

  Image generate(const std::string& prompt, uint64_t seed, const std::string& negative_prompt = "");
  // The ids a text encoder gets for `prompt`, under the manifest's truncation and padding rules.
  std::vector<int64_t> tokenize(const std::string& component, const std::string& prompt) const;

  const Manifest& manifest() const { return manifest_; }
  const std::map<std::string, StageStats>& stages() const { return stages_; }  // encode, denoise, decode

 private:
  struct Conditioning;
  Conditioning encode(const std::string& prompt);
  std::vector<float> denoise(const Conditioning& cond, const Conditioning* uncond, uint64_t seed);
  std::vector<float> decode(const std::vector<float>& latent);

  std::string bundle_;
  RunnerOptions options_;
  Manifest manifest_;
  std::map<std::string, std::unique_ptr<ClipTokenizer>> tokenizers_;
  std::map<std::string, StageStats> stages_;
};

}  // namespace flash_edge
