"""Two gloo processes train exactly as one process on the concatenated batch."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # spawned children import the worker module by name
import distill_workers  # noqa: E402

from flash_edge.distill.distributed import Dist  # noqa: E402

pytestmark = pytest.mark.slow  # spawns training processes: left out of the quick subset (pytest -m 'not slow')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(distill_workers.worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.fixture(scope="module")
def single():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        family, latents, prompts, params = distill_workers.setup(seed=0)
        return distill_workers.run_steps(Dist(), family, latents, prompts, params)
    finally:
        torch.set_num_threads(n)


def test_averaged_gradients_equal_single_process_gradients(ranks, single):
    for r in ranks:
        assert len(r["grads"]) == len(single["grads"])
        for g, ref in zip(r["grads"], single["grads"]):
            assert torch.allclose(g, ref, rtol=1e-4, atol=1e-6), float((g - ref).abs().max())
    assert max(float(ref.abs().max()) for ref in single["grads"]) > 1e-3  # not trivially zero


def test_weights_stay_in_sync_and_match_single_process(ranks, single):
    for w0, w1, ref in zip(ranks[0]["weights"], ranks[1]["weights"], single["weights"]):
        assert torch.equal(w0, w1)
        assert torch.allclose(w0, ref, rtol=1e-4, atol=1e-5), float((w0 - ref).abs().max())
    assert ranks[0]["losses"] == pytest.approx(single["losses"], rel=1e-5)


def test_shard_splits_the_global_batch():
    ctx = Dist(rank=1, world=2)
    assert ctx.shard(list(range(8))) == [4, 5, 6, 7]
    assert torch.equal(ctx.shard(torch.arange(8)), torch.arange(4, 8))
    with pytest.raises(ValueError, match="does not split"):
        ctx.shard(list(range(7)))
