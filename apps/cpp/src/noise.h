// The bundle's noise generator, splitmix64-boxmuller-v1 (README "The noise generator").
#pragma once

#include <cstddef>
#include <cstdint>

namespace flash_edge {

// Standard normal float32 noise for (seed, stream), `count` elements in C order.
void gaussian_noise(uint64_t seed, uint64_t stream, float* out, size_t count);

}  // namespace flash_edge
