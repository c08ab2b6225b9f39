// A bundle run end to end over ExecuTorch's C++ runtime (the runtime Android's org.pytorch.executorch.Module wraps),
// by the README's app contract: tokenize, encode, condition, denoise, decode, round to 8 bits.
//
// Memory (RunnerOptions::memory): every program is loaded with Module::LoadMode::Mmap. Under `low` (the default)
// each is loaded just before its stage and destroyed right after it (the text encoders one after the other, the
// transformer's chunks for the denoising loop, the decoder for the decode), so at most one stage's weights are
// resident; `stream` also loads each transformer chunk only for its own run; `fast` keeps every program loaded
// after its first use. The transformer's chunks share one set of activation buffers (the largest chunk's), not one
// each, and under `low` and `stream` the C heap's free pages go back to the OS between stages.
//
// Weight cache (RunnerOptions::weight_cache_dir): XNNPACK repacks a program's weights into its own layout at every
// load (4-5 s for a 2.25 GB int8 transformer on this project's 2-core CPU), which is what makes `low` and `stream` slow. With a
// cache directory, ExecuTorch's XNNPACK backend writes the packed weights to one file per program on the first load
// and maps that file on every later one (in this process or the next), so a load costs a mapping, and the packed
// weights are clean file-backed pages the OS can drop and re-read instead of anonymous memory. The files are named
// by the program's sha256 in the manifest, which is why the cache needs verified hashes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "manifest.h"

namespace flash_edge {

class ClipTokenizer;
class Loaded;
class SharedArena;

enum class Memory { Fast, Low, Stream };
Memory parse_memory(const std::string& policy);  // "fast" | "low" | "stream", else Error

struct RunnerOptions {
  bool verify_hashes = true;
  Memory memory = Memory::Low;
  std::string weight_cache_dir;  // an existing directory private to the app; empty: no cache
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

  // Later generations use this policy; leaving `fast` releases what it kept.
  void set_memory(Memory memory);
  // Later loads use this weight cache directory ("" for none); checked here (exists, writable, hashes verified).
  void set_weight_cache(const std::string& dir);

  const Manifest& manifest() const { return manifest_; }
  const std::map<std::string, StageStats>& stages() const { return stages_; }  // encode, denoise, decode

 private:
  struct Conditioning;
  Conditioning encode(const std::string& prompt);
  std::vector<float> denoise(const Conditioning& cond, const Conditioning* uncond, uint64_t seed);
  std::vector<float> decode(const std::vector<float>& latent);
  // The program loaded, or the resident one under `fast`; a program not kept is released with the last pointer.
  std::shared_ptr<Loaded> load(const std::string& name, const Program& program,
                               std::shared_ptr<SharedArena> arena = nullptr);
  // The activation buffers the transformer's chunks share (one set, each buffer the largest chunk's size).
  std::shared_ptr<SharedArena> chunk_arena();

  std::string bundle_;
  RunnerOptions options_;
  Manifest manifest_;
  std::map<std::string, std::unique_ptr<ClipTokenizer>> tokenizers_;
  std::map<std::string, StageStats> stages_;
  std::map<std::string, std::shared_ptr<Loaded>> resident_;  // under `fast`: every program loaded so far
  std::vector<size_t> chunk_arena_sizes_;                      // per planned buffer: the largest chunk's
  std::weak_ptr<SharedArena> chunk_arena_;                     // alive while chunks that use it are
};

}  // namespace flash_edge
