"""The model call inside the serving worker: device choice, one runner, an in-process batcher.

BentoML's own batching (a batchable API called from a per-request API) goes through
an in-process HTTP hop and counts that inner call against the worker's concurrency
limit; measured on 2 CPU cores it cost more than the model (docs/serving.md). Here
requests that are already validated and preprocessed queue on the event loop and
a single model thread takes whatever has queued, up to `max_batch_size`, as one
batch: a lone request runs at once (no waiting for a batch to fill), and under load
the batches grow by themselves while the previous call runs.

The model thread also does the torch-heavy half of the preprocessing (units,
resampling, normalization, batched by shape), so that it runs beside the event loop's
HTTP work on a second core instead of after it.

A classifier that takes window geometry (`InputSpec.geometry`) gets each job's (G,)
features in the same call, stacked in the same row order as the tubelets: a batch joins
requests from many clients, and row k's features are always row k's request's.

Shapes: a job holds one (T, H, W) tubelet (and, for such a model, its (G,) geometry
features); a model call takes (N, 1, T, S, S) (and (N, G)) and gives (N, C) logits; each
job gets its (C,) probabilities.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from thermops.model.preprocess import prepare_batch, to_model_units
from thermops.serve.errors import GeometryError, Overloaded, TubeletError


def select_device(setting: str, cuda_available: bool) -> str:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`; `cuda` without one is an error."""
    if setting == "auto":
        return "cuda" if cuda_available else "cpu"
    if setting == "cuda" and not cuda_available:
        raise RuntimeError("package.device is 'cuda' but torch sees no CUDA device")
    if setting not in ("cpu", "cuda"):
        raise ValueError(f"device {setting!r} is not auto, cpu or cuda")
    return setting


@dataclass
class Job:
    """One validated request for the model thread: raw values (T, H, W) and how to read them.

    `geo`: the (G,) float32 geometry features of the request's window, for a model that takes
    them (None otherwise). `units` is set on the model thread (`celsius`, `counts` or `display8`).
    """

    values: np.ndarray
    calibration: Any
    radiometric: str
    geo: np.ndarray | None = None
    units: str = ""


class ModelRunner:
    """A classifier in eval mode on its device, with its input preparation.

    `__call__(jobs)` runs on the model thread: each job's values go to the model's units
    (`to_model_units`), jobs of one shape and unit are resampled and normalized together
    (`prepare_batch`, the one preprocessing training uses), the model sees one
    (N, 1, T, S, S) batch, and each job gets its (C,) class probabilities, or the
    `TubeletError` that refused it alone. A model whose spec has geometry features also
    gets the jobs' (N, G) features, row k from the job of tubelet k; one without gets none.
    """

    def __init__(self, model: Any, device: str, spec: Any, trace: bool = True):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.spec = spec
        self.geo_dim = len(getattr(spec, "geometry", ()) or ())
        self.model = model.to(self.device).eval()
        self.traced = False
        if trace:
            self.model, self.traced = self._traced(self.model)
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.seconds = {"prepare": 0.0, "forward": 0.0}  # time spent, for /stats
        self._lock = threading.Lock()

    def _traced(self, model: Any) -> tuple[Any, bool]:
        """The model as a TorchScript trace, if it gives the same logits (1e-5).

        A traced forward runs in C++ and holds the GIL only at its ends; an eager one takes
        the GIL back between every layer, and beside the event loop's Python work each
        take can wait for the interpreter's switch interval (measured on 2 cores: a batch
        of 16 went from 21 ms alone to 87 ms beside a busy Python thread eager, 50 ms
        traced; docs/serving.md). Any failure keeps the eager model.
        """
        torch = self.torch
        shape = (1, self.spec.frames, self.spec.size, self.spec.size)

        def inputs(n: int, make: Callable[..., Any], **kw: Any) -> tuple[Any, ...]:
            x = make(n, *shape, **kw).to(self.device)
            return (x, make(n, self.geo_dim, **kw).to(self.device)) if self.geo_dim else (x,)

        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of compilers we cannot ship
                traced = torch.jit.trace(model, inputs(2, torch.zeros), check_trace=False)
                probe = inputs(3, torch.randn, generator=torch.Generator().manual_seed(0))
                same = torch.allclose(traced(*probe), model(*probe), atol=1e-5, rtol=0)
        except Exception:  # noqa: BLE001  (tracing is an optimisation; the eager model always works)
            return model, False
        return (traced, True) if same else (model, False)

    def forward(self, x: np.ndarray, geo: np.ndarray | None = None) -> np.ndarray:
        """(N, 1, T, S, S) float32 (and (N, G) geometry features for a model that takes them)
        -> (N, C) float32 logits."""
        torch = self.torch
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))]
            if self.geo_dim:
                if geo is None or geo.shape != (len(x), self.geo_dim):
                    raise ValueError(
                        f"({len(x)}, {self.geo_dim}) geometry features expected, got {getattr(geo, 'shape', None)}"
                    )
                args.append(torch.from_numpy(np.ascontiguousarray(geo, dtype=np.float32)))
            if self.device.type != "cpu":
                args = [a.to(self.device) for a in args]
            return self.model(*args).float().cpu().numpy()

    def prepare(self, jobs: list[Job]) -> list[np.ndarray | Exception]:
        """Jobs -> (1, 1, T, S, S) float32 model inputs (or the error of a job)."""
        out: list[np.ndarray | Exception] = [TubeletError("not prepared")] * len(jobs)
        groups: dict[tuple, list[tuple[int, np.ndarray]]] = collections.defaultdict(list)
        for i, job in enumerate(jobs):
            if self.geo_dim and (job.geo is None or job.geo.shape != (self.geo_dim,)):
                out[i] = GeometryError(
                    f"this model takes {self.geo_dim} geometry feature(s) per tubelet; the request has none",
                    field="window_px",
                )
                continue
            values, units = to_model_units(job.values, job.calibration, job.radiometric)
            job.units = units
            if not np.isfinite(values).all():
                out[i] = TubeletError(
                    f"values give no finite temperature through camera {job.calibration.camera_id!r}'s calibration"
                )
                continue
            groups[(values.shape, units)].append((i, values))
        for (_, units), members in groups.items():
            stack = self.torch.from_numpy(np.stack([v for _, v in members]).astype(np.float32, copy=False))
            x = prepare_batch(stack, units, self.spec).numpy()
            for k, (i, _) in enumerate(members):
                out[i] = x[k : k + 1]
        return out

    def __call__(self, jobs: list[Job]) -> list[np.ndarray | Exception]:
        """Jobs -> (C,) class probabilities each, or the error that refused the job."""
        t0 = time.perf_counter()
        prepared = self.prepare(jobs)
        good = [i for i, x in enumerate(prepared) if isinstance(x, np.ndarray)]
        t1 = time.perf_counter()
        if good:
            # geometry rows in the order of the tubelet rows: row k of both is job good[k]
            geo = np.stack([jobs[i].geo for i in good]) if self.geo_dim else None
            logits = self.forward(np.concatenate([prepared[i] for i in good]), geo)
        t2 = time.perf_counter()
        with self._lock:
            self.batch_sizes[len(good)] += 1
            self.seconds["prepare"] += t1 - t0
            self.seconds["forward"] += t2 - t1
        if good:
            z = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = z / z.sum(axis=1, keepdims=True)
            for k, i in enumerate(good):
                prepared[i] = probs[k]
        return prepared

    def stats(self) -> dict[str, int]:
        """Model calls by batch size."""
        with self._lock:
            return {str(k): v for k, v in sorted(self.batch_sizes.items())}

    def timing(self) -> dict[str, float]:
        """Mean milliseconds per model call spent preparing inputs and in the forward pass."""
        with self._lock:
            calls = max(sum(self.batch_sizes.values()), 1)
            return {f"{k}_ms_per_call": 1000 * v / calls for k, v in self.seconds.items()}


class Batcher:
    """Joins concurrent requests into model calls without delaying a lone one.

    `submit` is called on the worker's event loop; `run` (the model runner) works on
    one dedicated thread, so the loop keeps parsing the next requests meanwhile. At
    most `max_pending` jobs wait; beyond that `Overloaded` (a 503 with Retry-After).
    `run` takes a list of jobs and gives one result or exception per job; a failing
    call fails only the jobs of its batch.
    """

    def __init__(self, run: Callable[[list], list], max_batch_size: int, max_pending: int, retry_after_s: int):
        if max_batch_size < 1 or max_pending < 1:
            raise ValueError("max_batch_size and max_pending must be at least 1")
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_pending = max_pending
        self.retry_after_s = retry_after_s
        self._queue: collections.deque[tuple[Any, asyncio.Future]] = collections.deque()
        self._draining = False
        self.inline_calls = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="thermops-model")
        self.thread_id = self._executor.submit(threading.get_native_id).result()  # the model thread, for /stats

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """No model call running and none waiting."""
        return not self._draining and not self._queue

    async def submit(self, job: Any, alone: bool = False) -> Any:
        """One job -> its result, computed in a batch with its neighbours (or its exception, raised).

        `alone`: the caller knows no other request is in flight; if the model is idle too,
        the job runs right here on the event loop, sparing the two thread hand-offs (each a
        scheduler wake-up, which on a busy host costs more than the tiny model).
        """
        if alone and self.idle:
            self.inline_calls += 1
            result = self.run([job])[0]
            if isinstance(result, BaseException):
                raise result
            return result
        if len(self._queue) >= self.max_pending:
            raise Overloaded(
                f"{len(self._queue)} requests are waiting for the model; retry in {self.retry_after_s} s",
                retry_after=self.retry_after_s,
            )
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._queue.append((job, fut))
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                items = [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
                items = [(j, f) for j, f in items if not f.done()]  # a cancelled request leaves its batch
                if not items:
                    continue
                try:
                    results = await loop.run_in_executor(self._executor, self.run, [j for j, _ in items])
                except Exception as err:  # the call failed as a whole: fail this batch, keep serving
                    results = [err] * len(items)
                for (_, f), r in zip(items, results):
                    if f.done():
                        continue
                    if isinstance(r, BaseException):
                        f.set_exception(r)
                    else:
                        f.set_result(r)
        finally:
            self._draining = False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
