#include "flash_edge/flash_edge.h"

#include <cstring>
#include <exception>
#include <memory>
#include <string>

#include "png_writer.h"
#include "runner.h"

struct flash_edge_runner {
  std::unique_ptr<flash_edge::Runner> runner;
};

namespace {

void report(const char* message, char* err, size_t err_len) {
  if (!err || !err_len) return;
  std::strncpy(err, message, err_len - 1);
  err[err_len - 1] = '\0';
}

template <typename F>
int guarded(F&& f, char* err, size_t err_len) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    report(e.what(), err, err_len);
  } catch (...) {
    report("unknown error", err, err_len);
  }
  return 1;
}

}  // namespace

extern "C" {

flash_edge_runner* flash_edge_open(const char* bundle_dir, int verify_hashes, char* err, size_t err_len) {
  auto handle = std::make_unique<flash_edge_runner>();
  flash_edge::RunnerOptions options;
  options.verify_hashes = verify_hashes != 0;
  if (!bundle_dir) return report("bundle_dir is NULL", err, err_len), nullptr;
  int rc = guarded([&] { handle->runner = std::make_unique<flash_edge::Runner>(bundle_dir, options); }, err, err_len);
  return rc ? nullptr : handle.release();
}

int flash_edge_set_memory(flash_edge_runner* runner, const char* policy, char* err, size_t err_len) {
  if (!runner || !policy) return report("runner and policy must not be NULL", err, err_len), 1;
  return guarded([&] { runner->runner->set_memory(flash_edge::parse_memory(policy)); }, err, err_len);
}

int flash_edge_set_weight_cache(flash_edge_runner* runner, const char* dir, char* err, size_t err_len) {
  if (!runner) return report("runner must not be NULL", err, err_len), 1;
  return guarded([&] { runner->runner->set_weight_cache(dir ? dir : ""); }, err, err_len);
}

void flash_edge_image_size(const flash_edge_runner* runner, int* height, int* width) {
  if (height) *height = runner ? runner->runner->manifest().height : 0;
  if (width) *width = runner ? runner->runner->manifest().width : 0;
}

int flash_edge_generate(flash_edge_runner* runner, const char* prompt, uint64_t seed, uint8_t* rgb_out, char* err,
                        size_t err_len) {
  if (!runner || !prompt || !rgb_out) return report("runner, prompt and rgb_out must not be NULL", err, err_len), 1;
  return guarded([&] {
    flash_edge::Image image = runner->runner->generate(prompt, seed);
    std::memcpy(rgb_out, image.rgb.data(), image.rgb.size());
  }, err, err_len);
}

int flash_edge_generate_png(flash_edge_runner* runner, const char* prompt, uint64_t seed, const char* png_path,
                            char* err, size_t err_len) {
  if (!runner || !prompt || !png_path) return report("runner, prompt and png_path must not be NULL", err, err_len), 1;
  return guarded([&] {
    flash_edge::Image image = runner->runner->generate(prompt, seed);
    flash_edge::write_png(image, png_path, {{"prompt", prompt}, {"seed", std::to_string(seed)}, {"software", "flash-edge-run"}});
  }, err, err_len);
}

void flash_edge_close(flash_edge_runner* runner) { delete runner; }

}  // extern "C"
