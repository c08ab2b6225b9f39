import numpy as np
import pytest

from flash_edge.errors import InvalidInput
from flash_edge.sampler import SamplerConfig, flow_sigmas, gaussian_noise, sample


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_sigmas_equal_diffusers_scheduler(steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(steps)
    np.testing.assert_array_equal(flow_sigmas(steps, 3.0), sched.sigmas.numpy())
    np.testing.assert_array_equal(SamplerConfig.from_shift(steps, 3.0).timesteps, sched.timesteps.numpy())


def test_euler_steps_equal_diffusers_scheduler():
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(4)
    rng = np.random.default_rng(1)
    velocities = [rng.standard_normal((1, 4, 8, 8)).astype(np.float32) for _ in range(4)]
    x0 = gaussian_noise(5, (1, 4, 8, 8))
    calls = iter(velocities)
    ours = sample(lambda x, t: next(calls), SamplerConfig.from_shift(4, 3.0), (1, 4, 8, 8), seed=5)
    x = torch.from_numpy(x0)
    for t, v in zip(sched.timesteps, velocities):
        x = sched.step(torch.from_numpy(v), t, x).prev_sample
    np.testing.assert_allclose(ours, x.numpy(), rtol=0, atol=1e-6)


def test_renoise_rule_predicts_x0_and_renoises():
    cfg = SamplerConfig(sigmas=(1.0, 0.5, 0.0), rule="renoise")
    shape = (1, 2, 4, 4)
    v = np.full(shape, 0.25, np.float32)
    out = sample(lambda x, t: v, cfg, shape, seed=3)
    x = gaussian_noise(3, shape)
    x0 = x - 1.0 * v
    x = 0.5 * x0 + 0.5 * gaussian_noise(3, shape, stream=1)
    x0 = x - 0.5 * v
    np.testing.assert_allclose(out, x0, atol=1e-6)  # last sigma is 0: the clean estimate


def test_noise_is_reproducible_documented_and_standard_normal():
    a = gaussian_noise(42, (1, 16, 64, 64))
    np.testing.assert_array_equal(a, gaussian_noise(42, (1, 16, 64, 64)))
    assert a.dtype == np.float32 and abs(a.mean()) < 0.01 and abs(a.std() - 1) < 0.01
    assert not np.array_equal(a, gaussian_noise(43, a.shape))
    # The first values of seed 0 pin the documented generator (README): any change breaks apps' parity.
    np.testing.assert_allclose(gaussian_noise(0, (4,)), [-0.45275775, 0.20776604, 2.650606, -0.49042282], atol=1e-6)
    # A prefix of a longer draw equals a shorter draw: element k depends on (seed, stream, k) only.
    np.testing.assert_array_equal(gaussian_noise(0, (3,)), gaussian_noise(0, (6,))[:3])


@pytest.mark.parametrize("steps", [0, 1001, 2.5, True])
def test_steps_out_of_range_are_refused(steps):
    with pytest.raises(InvalidInput, match="steps must be an integer from 1 to 1000"):
        flow_sigmas(steps)


def test_a_bundles_few_step_limit_is_separate_from_the_samplers():
    """The sampler runs a teacher's 40 steps; a bundle holds at most MAX_STEPS (export and manifest checks)."""
    from flash_edge.sampler import MAX_STEPS, check_steps

    assert SamplerConfig.from_shift(40, 3.0).steps == 40
    with pytest.raises(InvalidInput, match=f"steps must be an integer from 1 to {MAX_STEPS}, got 9"):
        check_steps(9)


def test_bad_sigmas_are_refused():
    with pytest.raises(InvalidInput, match="decrease strictly"):
        SamplerConfig(sigmas=(0.5, 0.7, 0.0))
    with pytest.raises(InvalidInput, match="unknown step rule"):
        SamplerConfig(sigmas=(1.0, 0.0), rule="heun")


def _scalar_reference(seed, count, stream=0):
    """The README's description of the generator, written as an app would: plain integers and math."""
    import math

    mask = (1 << 64) - 1

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    base = (seed + stream * 0xD1B54A32D192ED03) & mask
    out = []
    for m in range((count + 1) // 2):
        u1, u2 = (((mix((base + (k + 1) * 0x9E3779B97F4A7C15) & mask) >> 11) + 1) * 2.0**-53
                  for k in (2 * m, 2 * m + 1))
        r, theta = math.sqrt(-2 * math.log(u1)), 2 * math.pi * u2
        out += [r * math.cos(theta), r * math.sin(theta)]
    return np.asarray(out[:count], dtype=np.float32)


@pytest.mark.parametrize("seed,stream", [(0, 0), (123456789, 0), (2**63 + 5, 3)])
def test_noise_matches_scalar_reference(seed, stream):
    np.testing.assert_array_equal(gaussian_noise(seed, (7,), stream=stream), _scalar_reference(seed, 7, stream))
