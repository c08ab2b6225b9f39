/* flash-edge native runner: a plain C API over a bundle, for JNI (Android) and Swift (iOS) bridges.
 *
 *   char err[512];
 *   flash_edge_runner* r = flash_edge_open("/path/to/bundle", 1, err, sizeof err);
 *   if (!r) { report(err); }
 *   flash_edge_set_weight_cache(r, "/path/to/app/cache", err, sizeof err);   (optional: fast loads from the 2nd)
 *   int h, w; flash_edge_image_size(r, &h, &w);
 *   uint8_t* rgb = malloc((size_t)h * w * 3);
 *   if (flash_edge_generate(r, "a red circle on the left", 0, rgb, err, sizeof err) != 0) { report(err); }
 *   flash_edge_close(r);
 *
 * Every function that can fail returns NULL or non-zero and writes a one-line message into err (truncated to
 * err_len, always NUL-terminated). A runner is not thread-safe: use one per thread, or serialise calls. */
#ifndef FLASH_EDGE_H
#define FLASH_EDGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct flash_edge_runner flash_edge_runner;

/* Open and validate a bundle (manifest, paths, sizes, and sha256 of every file when verify_hashes is non-zero).
 * No model is loaded yet: each is memory-mapped just before its stage and released after it (the "low" policy;
 * see flash_edge_set_memory). */
flash_edge_runner* flash_edge_open(const char* bundle_dir, int verify_hashes, char* err, size_t err_len);

/* The memory policy for later generations: "low" (the default: each stage's programs are mapped just before the
 * stage and released after it), "stream" (low, and each transformer chunk only for its own run), or "fast" (every
 * program stays loaded after its first use: the lowest latency from the second image on, the highest peak).
 * Returns 0, or non-zero with a message in err. */
int flash_edge_set_memory(flash_edge_runner* runner, const char* policy, char* err, size_t err_len);

/* Keep XNNPACK's packed weights in `dir` (an existing, writable directory private to the app, such as its cache
 * directory; NULL or "" turns the cache off). The first load of a program packs its weights and writes them to
 * <dir>/<sha256 prefix of the program>.xnnpack; every later load, in this process or a later one, maps that file
 * instead of packing again (seconds per load for a large model). The files take about the programs' size on
 * disk; deleting them is always safe. Needs a runner opened with verify_hashes. Returns 0, or non-zero with a
 * message in err. */
int flash_edge_set_weight_cache(flash_edge_runner* runner, const char* dir, char* err, size_t err_len);

/* The image the bundle draws: height and width in pixels. */
void flash_edge_image_size(const flash_edge_runner* runner, int* height, int* width);

/* Draw `prompt` (UTF-8, not blank) from `seed` (any 64-bit value) into rgb_out: height x width x 3 bytes,
 * rows top to bottom. Returns 0, or non-zero with a message in err. */
int flash_edge_generate(flash_edge_runner* runner, const char* prompt, uint64_t seed, uint8_t* rgb_out, char* err,
                        size_t err_len);

/* The same, written as a PNG file (with the prompt and seed as text chunks). */
int flash_edge_generate_png(flash_edge_runner* runner, const char* prompt, uint64_t seed, const char* png_path,
                            char* err, size_t err_len);

void flash_edge_close(flash_edge_runner* runner);

#ifdef __cplusplus
}
#endif

#endif /* FLASH_EDGE_H */
