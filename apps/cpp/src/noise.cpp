#include "noise.h"

#include <cmath>

namespace flash_edge {
namespace {

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kStreamGamma = 0xD1B54A32D192ED03ull;

uint64_t mix64(uint64_t z) {  // SplitMix64's output function; unsigned arithmetic wraps mod 2^64
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double uniform(uint64_t base, uint64_t j) {  // in (0, 1]: 53 random bits, plus one
  return (static_cast<double>(mix64(base + (j + 1) * kGamma) >> 11) + 1.0) * 0x1p-53;
}

}  // namespace

void gaussian_noise(uint64_t seed, uint64_t stream, float* out, size_t count) {
  const uint64_t base = seed + stream * kStreamGamma;
  const double two_pi = 2.0 * M_PI;
  for (size_t m = 0; 2 * m < count; ++m) {
    const double r = std::sqrt(-2.0 * std::log(uniform(base, 2 * m)));
    const double theta = two_pi * uniform(base, 2 * m + 1);
    out[2 * m] = static_cast<float>(r * std::cos(theta));
    if (2 * m + 1 < count) out[2 * m + 1] = static_cast<float>(r * std::sin(theta));
  }
}

}  // namespace flash_edge
