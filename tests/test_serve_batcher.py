"""The in-process batcher and the model runner, without a server.

A lone request runs at once; concurrent requests join one model call; a refused job
or a failing call fails only its own requests; the runner's batched preparation gives
what `model_input` (the per-tubelet path the tests compare against) gives.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch
from serving_helpers import SPEC, display8_calibration, make_gated_model, radiometric_calibration
from serving_payloads import counts_tubelet, display8_tubelet

from thermops.model.card import load_model_dir
from thermops.serve.batcher import Batcher, Job, ModelRunner, select_device
from thermops.serve.errors import Overloaded, TubeletError
from thermops.serve.requests import model_input


class Recorder:
    """A `run` that records batch sizes and doubles its inputs, slowly enough for a queue to form."""

    def __init__(self, delay: float = 0.05, fail_on=None):
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.delay = delay
        self.fail_on = fail_on

    def __call__(self, jobs):
        self.batches.append(len(jobs))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in jobs:
            raise RuntimeError("the whole call failed")
        return [ValueError(f"bad {j}") if isinstance(j, str) else j * 2 for j in jobs]


def test_select_device():
    assert select_device("auto", True) == "cuda"
    assert select_device("auto", False) == "cpu"
    assert select_device("cpu", True) == "cpu"
    assert select_device("cuda", True) == "cuda"
    with pytest.raises(RuntimeError, match="no CUDA"):
        select_device("cuda", False)
    with pytest.raises(ValueError):
        select_device("tpu", True)


def test_a_lone_request_runs_inline_without_waiting():
    rec = Recorder(delay=0.0)
    b = Batcher(rec, max_batch_size=8, max_pending=8, retry_after_s=1)

    async def run():
        return await b.submit(21, alone=True)

    assert asyncio.run(run()) == 42
    assert rec.batches == [1] and b.inline_calls == 1
    assert rec.threads == {threading.current_thread().name}


def test_concurrent_requests_join_one_call_on_the_model_thread():
    rec = Recorder(delay=0.05)
    b = Batcher(rec, max_batch_size=8, max_pending=64, retry_after_s=1)

    async def run():
        return await asyncio.gather(*(b.submit(i) for i in range(20)))

    assert asyncio.run(run()) == [2 * i for i in range(20)]
    # The first call takes what queued at once (all 20, cut to 8), then the rest.
    assert rec.batches == [8, 8, 4]
    assert rec.threads == {"thermops-model_0"}
    assert b.idle and b.inline_calls == 0


def test_a_refused_job_fails_alone_and_a_failed_call_fails_only_its_batch():
    rec = Recorder(delay=0.02, fail_on=99)
    b = Batcher(rec, max_batch_size=4, max_pending=64, retry_after_s=1)

    async def run():
        return await asyncio.gather(*(b.submit(j) for j in [1, "x", 2, 3, 99, 5, 6, 7]), return_exceptions=True)

    out = asyncio.run(run())
    assert out[0] == 2 and isinstance(out[1], ValueError) and out[2:4] == [4, 6]
    assert all(isinstance(r, RuntimeError) for r in out[4:8])  # the batch [99, 5, 6, 7]
    assert rec.batches == [4, 4]


def test_past_max_pending_is_overloaded():
    rec = Recorder(delay=0.1)
    b = Batcher(rec, max_batch_size=2, max_pending=3, retry_after_s=7)

    async def run():
        return await asyncio.gather(*(b.submit(i) for i in range(6)), return_exceptions=True)

    out = asyncio.run(run())
    refused = [r for r in out if isinstance(r, Overloaded)]
    assert len(refused) == 3 and refused[0].retry_after == 7 and refused[0].status == 503
    assert [r for r in out if not isinstance(r, Exception)] == [0, 2, 4]


def test_a_cancelled_request_leaves_its_batch():
    rec = Recorder(delay=0.05)
    b = Batcher(rec, max_batch_size=8, max_pending=64, retry_after_s=1)

    async def run():
        first = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.01)  # the first call is running
        waiting = [asyncio.ensure_future(b.submit(i)) for i in (2, 3, 4)]
        await asyncio.sleep(0)
        waiting[1].cancel()
        return await first, await waiting[0], await waiting[2]

    assert asyncio.run(run()) == (2, 4, 8)
    assert rec.batches == [1, 2]


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    paths = make_gated_model(tmp_path_factory.mktemp("batcher"))
    model, card = load_model_dir(paths["model"])
    torch.set_num_threads(1)
    return ModelRunner(model, "cpu", SPEC), paths["model"]


def test_runner_equals_the_per_tubelet_path(runner):
    """Batched preparation (grouped by shape and units) and one batched forward give, per
    job, the softmax of the per-tubelet `model_input` path."""
    run, model_dir = runner
    model, _ = load_model_dir(model_dir)
    lin, d8 = radiometric_calibration(), display8_calibration()
    arrays = [
        (counts_tubelet(8, 32, 32, seed=1), lin),
        (counts_tubelet(8, 32, 32, seed=2), lin),
        (counts_tubelet(6, 40, 30, seed=3), lin),
        (display8_tubelet(5, 40, 48, seed=4), d8),
        (display8_tubelet(5, 40, 48, seed=5), d8),
    ]
    jobs = [Job(a, c, "celsius") for a, c in arrays]
    out = run(jobs)
    for (a, c), job, probs in zip(arrays, jobs, out):
        x, units = model_input(a.astype(np.float64), c, "celsius", SPEC)
        with torch.no_grad():
            logits = model(torch.from_numpy(x)).numpy()[0]
        want = np.exp(logits - logits.max())
        want /= want.sum()
        assert job.units == units
        np.testing.assert_allclose(probs, want, atol=1e-5)
    assert run.stats() == {"5": 1}


def test_runner_refuses_one_job_and_serves_the_others(runner):
    """A job whose values give no finite temperature is refused alone (the values skip the
    request checks here, so the runner's own check is what refuses them)."""
    run, _ = runner
    lin = radiometric_calibration()
    bad = np.full((2, 8, 8), np.inf)
    out = run(
        [
            Job(counts_tubelet(seed=1), lin, "celsius"),
            Job(bad, lin, "celsius"),
            Job(counts_tubelet(seed=2), lin, "celsius"),
        ]
    )
    assert isinstance(out[1], TubeletError) and "finite temperature" in str(out[1])
    assert all(isinstance(o, np.ndarray) and o.shape == (4,) and abs(o.sum() - 1) < 1e-5 for o in (out[0], out[2]))


def test_the_model_runs_traced_and_gives_the_eager_answers(runner):
    """The runner traces the model (its forward then holds the GIL only at its ends) and
    falls back to eager only if the trace disagrees; both give the same probabilities."""
    run, model_dir = runner
    assert run.traced
    model, _ = load_model_dir(model_dir)
    eager = ModelRunner(model, "cpu", SPEC, trace=False)
    assert not eager.traced
    jobs = [Job(counts_tubelet(8, 32, 32, seed=s), radiometric_calibration(), "celsius") for s in range(3)]
    for a, b in zip(run(jobs), eager(jobs)):
        np.testing.assert_allclose(a, b, atol=1e-6)
