#include "program.h"

#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/backend/backend_options_map.h>
#include <executorch/runtime/backend/options.h>

#include <algorithm>

#include "error.h"

namespace flash_edge {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::runtime::EValue;

SharedArena::SharedArena(const std::vector<size_t>& sizes) {
  for (size_t size : sizes) {
    buffers_.emplace_back(new uint8_t[std::max<size_t>(size, 1)]);  // uninitialised: pages are touched on use
    spans_.emplace_back(buffers_.back().get(), size);
  }
}

std::unique_ptr<executorch::runtime::HierarchicalAllocator> SharedArena::allocator_for(
  const executorch::runtime::MethodMeta& meta, const std::string& name) {
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

Loaded::Loaded(const std::string& bundle, const std::string& name, const Program& program,
               const std::string& cache_file, std::shared_ptr<SharedArena> arena)
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

void Loaded::run(State& state) {
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

std::vector<size_t> largest_planned_buffers(const std::string& bundle, const std::vector<Program>& programs) {
  std::vector<size_t> sizes;
  for (const Program& program : programs) {
    Module module(bundle_file(bundle, program.path), Module::LoadMode::Mmap);
    auto meta = module.method_meta("forward");
    if (!meta.ok())
      throw Error("executorch cannot read " + bundle_file(bundle, program.path) + " (error " +
                  std::to_string(static_cast<int>(meta.error())) + ")");
    const size_t count = meta->num_memory_planned_buffers();
    if (sizes.size() < count) sizes.resize(count, 0);
    for (size_t b = 0; b < count; ++b) {
      auto size = meta->memory_planned_buffer_size(b);
      if (!size.ok()) throw Error("executorch cannot size " + bundle_file(bundle, program.path) + "'s buffers");
      sizes[b] = std::max(sizes[b], static_cast<size_t>(size.get()));
    }
  }
  return sizes;
}

}  // namespace flash_edge
