// The app contract this runner implements (README "App contract", version 2): the manifest's rule strings,
// which must read exactly so (flash_edge/contract.py writes them; tests/test_native_runner.py checks the match).
#pragma once

namespace flash_edge::contract {

inline constexpr const char* kNoise = "splitmix64-boxmuller-v1";
inline constexpr const char* kUint8 = "round_half_even(clamp(x, 0, 1) * 255) in float32";
inline constexpr const char* kInitialNoise = "noise(seed, stream=0)";
inline constexpr const char* kUpdateEuler = "x = x + (sigmas[i+1] - sigmas[i]) * v";
inline constexpr const char* kUpdateRenoise =
    "x0 = x - sigmas[i] * v; x = (1 - sigmas[i+1]) * x0 + sigmas[i+1] * noise(seed, stream=i+1) "
    "(= x0 at the last step, where sigmas[i+1] = 0)";
inline constexpr const char* kGuidance =
    "v = vu + guidance_scale * (vc - vu), vc from the prompt, vu from the negative prompt (default empty)";
inline constexpr const char* kTruncation = "keep_first";
inline constexpr const char* kPadding = "right";

}  // namespace flash_edge::contract
