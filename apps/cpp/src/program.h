// One .pte program as the runner loads it (memory-mapped, through ExecuTorch's C++ Module), run with named inputs,
// and the activation buffers that programs run one after another can share.
#pragma once

#include <executorch/extension/module/module.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "manifest.h"

namespace flash_edge {

// A named tensor's data: float32, or int64 for input_ids.
struct Data {
  std::vector<float> f;
  std::vector<int64_t> i;
};
using State = std::map<std::string, Data>;

// One set of memory-planned buffers (activations) for programs that run one after another, each sized to the
// largest program's: a transformer's chunks share it instead of holding one each. Safe because a program's
// activations only matter during its own run: its inputs are copied in when it starts and its outputs copied out
// (Loaded::run) before the next program runs.
class SharedArena {
 public:
  explicit SharedArena(const std::vector<size_t>& sizes);
  // The planned memory for one program (its method's buffer sizes), over the shared buffers.
  std::unique_ptr<executorch::runtime::HierarchicalAllocator> allocator_for(const executorch::runtime::MethodMeta& meta,
                                                                             const std::string& name);

 private:
  std::vector<std::unique_ptr<uint8_t[]>> buffers_;
  std::vector<executorch::runtime::Span<uint8_t>> spans_;
};

// Per planned buffer, the largest size any of `programs` asks for: what a SharedArena for them holds.
std::vector<size_t> largest_planned_buffers(const std::string& bundle, const std::vector<Program>& programs);

// One loaded .pte program (memory-mapped), run with named inputs from `state`, writing its named outputs. With a
// cache file, XNNPACK's packed weights are read from it (written on the first load) instead of packed again; with
// an arena, its activations live there.
class Loaded {
 public:
  Loaded(const std::string& bundle, const std::string& name, const Program& program, const std::string& cache_file,
         std::shared_ptr<SharedArena> arena);
  void run(State& state);

 private:
  std::string name_;
  Program program_;
  std::shared_ptr<SharedArena> arena_;  // these two outlive module_ (declared before it)
  std::unique_ptr<executorch::runtime::HierarchicalAllocator> planned_;
  std::unique_ptr<executorch::extension::Module> module_;
};

}  // namespace flash_edge
