/* c-api-check: the C API as an app's JNI or Swift bridge calls it, for the tests.
 *
 *   c-api-check BUNDLE PROMPT SEED POLICY CACHE_DIR|- RUNS OUT.rgb
 *
 * Opens BUNDLE (hashes verified), sets the memory policy and the weight cache ("-": none), draws PROMPT from SEED
 * RUNS times into one buffer each, checks they are equal, and writes the last as raw height x width x 3 bytes.
 * Errors: the API's message on stderr, exit status 2. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flash_edge/flash_edge.h"

static int fail(const char* what, const char* err) {
  fprintf(stderr, "c-api-check: %s: %s\n", what, err);
  return 2;
}

int main(int argc, char** argv) {
  char err[512];
  if (argc != 8) return fail("usage", "c-api-check BUNDLE PROMPT SEED POLICY CACHE_DIR|- RUNS OUT.rgb");
  flash_edge_runner* r = flash_edge_open(argv[1], 1, err, sizeof err);
  if (!r) return fail("open", err);
  int status = 0, h = 0, w = 0;
  unsigned char *rgb = NULL, *previous = NULL;
  if (flash_edge_set_memory(r, argv[4], err, sizeof err) != 0) { status = fail("set_memory", err); goto done; }
  if (strcmp(argv[5], "-") != 0 && flash_edge_set_weight_cache(r, argv[5], err, sizeof err) != 0) {
    status = fail("set_weight_cache", err);
    goto done;
  }
  flash_edge_image_size(r, &h, &w);
  size_t bytes = (size_t)h * (size_t)w * 3;
  for (int run = 0; run < atoi(argv[6]); ++run) {
    free(previous);
    previous = rgb;
    rgb = malloc(bytes);
    if (!rgb) { status = fail("malloc", "out of memory"); goto done; }
    if (flash_edge_generate(r, argv[2], strtoull(argv[3], NULL, 10), rgb, err, sizeof err) != 0) {
      status = fail("generate", err);
      goto done;
    }
    if (previous && memcmp(previous, rgb, bytes) != 0) {
      status = fail("generate", "runs drew different images");
      goto done;
    }
  }
  FILE* out = rgb ? fopen(argv[7], "wb") : NULL;
  if (!out || fwrite(rgb, 1, bytes, out) != bytes) status = fail("write", argv[7]);
  if (out) fclose(out);
done:
  free(previous);
  free(rgb);
  flash_edge_close(r);
  return status;
}
