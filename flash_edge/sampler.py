"""The fixed few-step flow-matching sampler, in numpy, shared by every backend.

Rectified flow: x_sigma = (1 - sigma) * x0 + sigma * noise, and the model predicts the velocity
v = noise - x0. Two step rules:

* ``euler``: x_next = x + (sigma_next - sigma) * v. Deterministic; identical to diffusers'
  ``FlowMatchEulerDiscreteScheduler``.
* ``renoise``: x0 = x - sigma * v, then x_next = (1 - sigma_next) * x0 + sigma_next * fresh_noise.
  The DMD2-style rule used by distilled students (diffusers calls it ``stochastic_sampling``).

The initial noise (and the fresh noise of ``renoise``) comes from :func:`gaussian_noise`, a counter-based
generator that an app in Swift or Kotlin reproduces in a few lines (see the README), so every backend
and every platform starts from the same latent for the same seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .errors import GenerationError, InvalidInput

STEP_RULES = ("euler", "renoise")
MIN_STEPS, MAX_STEPS = 1, 8  # a bundle's few-step sampler (export and manifest validation)
MAX_SAMPLER_STEPS = 1000  # the sampler itself: a teacher's 40 steps run through the same loop
NOISE_GENERATOR = "splitmix64-boxmuller-v1"

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_STREAM_GAMMA = np.uint64(0xD1B54A32D192ED03)
_MASK64 = (1 << 64) - 1


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Steele, Lea & Flood 2014), on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def gaussian_noise(seed: int, shape: tuple[int, ...], stream: int = 0) -> np.ndarray:
    """Standard normal float32 noise of ``shape``, reproducible from ``(seed, stream)`` on any platform.

    Element pairs come from Box-Muller on SplitMix64 outputs:
    ``base = seed + stream * 0xD1B54A32D192ED03 (mod 2**64)``; the k-th 64-bit word is
    ``mix64(base + (k + 1) * 0x9E3779B97F4A7C15)``; ``u = ((word >> 11) + 1) / 2**53`` lies in (0, 1];
    words 2m and 2m+1 give ``r = sqrt(-2 ln u1)``, ``theta = 2 pi u2`` and elements
    ``2m = r cos(theta)``, ``2m+1 = r sin(theta)`` (float64, then rounded to float32), in C order.
    """
    check_seed(seed)
    count = int(np.prod(shape, dtype=np.int64))
    pairs = (count + 1) // 2
    base = np.uint64((int(seed) + int(stream) * int(_STREAM_GAMMA)) & _MASK64)
    with np.errstate(over="ignore"):
        k = np.arange(1, 2 * pairs + 1, dtype=np.uint64)
        words = _mix64(base + k * _GAMMA)
    u = ((words >> np.uint64(11)).astype(np.float64) + 1.0) * (2.0**-53)
    r = np.sqrt(-2.0 * np.log(u[0::2]))
    theta = 2.0 * np.pi * u[1::2]
    z = np.empty(2 * pairs, dtype=np.float64)
    z[0::2] = r * np.cos(theta)
    z[1::2] = r * np.sin(theta)
    return z[:count].astype(np.float32).reshape(shape)


MAX_SEED = (1 << 64) - 1


def check_seed(seed) -> int:
    """A seed is an integer from 0 to 2**64 - 1 (the generator's whole state); anything else is refused
    rather than wrapped, so two different seeds never give the same picture."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise InvalidInput(f"seed must be an integer, got {seed!r}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise InvalidInput(f"seed must be from 0 to 2**64 - 1 ({MAX_SEED}), got {seed}")
    return int(seed)


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """SD3's timestep shift: sigma' = shift * sigma / (1 + (shift - 1) * sigma)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(steps: int, shift: float = 3.0, num_train_timesteps: int = 1000) -> np.ndarray:
    """The ``steps + 1`` sigmas (last one 0) that ``FlowMatchEulerDiscreteScheduler.set_timesteps`` makes.

    Follows diffusers exactly, float32 roundings included: the training grid is shifted in float32, its
    smallest sigma bounds a float64 linspace, which is shifted again and rounded to float32.
    """
    check_steps(steps, MAX_SAMPLER_STEPS)
    train_t = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1]
    train_sigmas = shift_sigmas(train_t / np.float32(num_train_timesteps), np.float32(shift)).astype(np.float32)
    sigma_max, sigma_min = float(train_sigmas[0]), float(train_sigmas[-1])
    t = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, steps)
    sigmas = shift_sigmas(t / num_train_timesteps, shift).astype(np.float32)
    return np.append(sigmas, np.float32(0.0))


def check_steps(steps: int, limit: int = MAX_STEPS) -> None:
    """``steps`` is an integer from 1 to ``limit``: ``MAX_STEPS`` for a bundle (few-step students), ``MAX_SAMPLER_STEPS``
    for the sampler itself (a reference or teacher run)."""
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or not MIN_STEPS <= steps <= limit:
        raise InvalidInput(f"steps must be an integer from {MIN_STEPS} to {limit}, got {steps!r}")


@dataclass(frozen=True)
class SamplerConfig:
    """Everything the sampling loop needs; stored verbatim in a bundle's manifest. Any step count runs (a teacher's
    40 steps too); a bundle holds at most ``MAX_STEPS`` (checked where bundles are written and read)."""

    sigmas: tuple[float, ...]  # steps + 1 values, strictly decreasing, ending at 0
    rule: str = "euler"
    timestep_scale: float = 1000.0  # the transformer receives timestep = sigma * timestep_scale
    shift: float | None = None  # informational: the shift the sigmas were made with, if any
    guidance_scale: float = 1.0  # > 1 enables classifier-free guidance (teachers only)
    noise: str = field(default=NOISE_GENERATOR)

    def __post_init__(self) -> None:
        sig = np.asarray(self.sigmas, dtype=np.float64)
        check_steps(len(sig) - 1, MAX_SAMPLER_STEPS)
        for name in ("timestep_scale", "guidance_scale") + (("shift",) if self.shift is not None else ()):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) or value < 0:
                raise InvalidInput(f"{name} must be a finite number >= 0, got {value!r}")
        if not np.all(np.isfinite(sig)) or sig[-1] != 0.0 or np.any(np.diff(sig) >= 0) or sig[0] > 1.0 or np.any(sig < 0):
            raise InvalidInput(f"sigmas must decrease strictly from at most 1 to a final 0, got {list(self.sigmas)}")
        if self.rule not in STEP_RULES:
            raise InvalidInput(f"unknown step rule {self.rule!r}; choose one of {', '.join(STEP_RULES)}")
        if self.noise != NOISE_GENERATOR:
            raise InvalidInput(f"unknown noise generator {self.noise!r}; this version knows {NOISE_GENERATOR}")

    @classmethod
    def from_shift(cls, steps: int, shift: float, **kw) -> "SamplerConfig":
        return cls(sigmas=tuple(float(s) for s in flow_sigmas(steps, shift)), shift=float(shift), **kw)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def timesteps(self) -> np.ndarray:
        """What the transformer receives at each step (float32, as diffusers computes it)."""
        return np.asarray(self.sigmas[:-1], dtype=np.float32) * np.float32(self.timestep_scale)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sigmas"] = list(self.sigmas)
        d["steps"] = self.steps
        d["timesteps"] = [float(t) for t in self.timesteps]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SamplerConfig":
        keys = ("rule", "timestep_scale", "shift", "guidance_scale", "noise")
        return cls(sigmas=tuple(float(s) for s in d["sigmas"]), **{k: d[k] for k in keys if k in d})


Velocity = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (latent, timestep[1]) -> velocity


def sample(velocity: Velocity, config: SamplerConfig, shape: tuple[int, ...], seed: int,
           on_step: Callable[[int, int], None] | None = None, latents: np.ndarray | None = None) -> np.ndarray:
    """Run the fixed sampler from seeded noise (or ``latents``) and return the final latent (float32)."""
    x = gaussian_noise(seed, shape, stream=0) if latents is None else np.asarray(latents, dtype=np.float32)
    sigmas = np.asarray(config.sigmas, dtype=np.float32)
    for i, t in enumerate(config.timesteps):
        v = np.asarray(velocity(x, np.array([t], dtype=np.float32)), dtype=np.float32)
        if not np.all(np.isfinite(v)):
            raise GenerationError(f"the transformer returned non-finite values (NaN or inf) at step {i + 1} of "
                                  f"{config.steps}: the model or its export is broken")
        if config.rule == "euler":
            x = x + (sigmas[i + 1] - sigmas[i]) * v
        else:  # renoise: jump to the clean estimate, then to the next noise level with fresh noise
            x0 = x - sigmas[i] * v
            x = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * gaussian_noise(seed, shape, stream=i + 1)
        if on_step is not None:
            on_step(i + 1, config.steps)
    return x
