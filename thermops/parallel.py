"""Order-preserving process map for the CPU-bound, deterministic per-item work of the data
stages (rendering a camera's clips, cutting a clip's tubelets).

Each item's result depends only on the item (its seeds travel with it), so the output is the
same, byte for byte, with any number of workers; only the wall time changes. Workers are an
execution setting, not a result knob, so they are not in params.yaml: by default one per
usable CPU core (affinity and cgroup quota; at most one per item); `THERMOPS_WORKERS=1` runs everything in this process.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

ENV = "THERMOPS_WORKERS"
_in_worker = False  # set in this module's pool workers


def _mark_worker() -> None:
    global _in_worker
    _in_worker = True


def worker_count(n_items: int) -> int:
    """Processes for `n_items` items: THERMOPS_WORKERS, else `usable_cores()`; at most n_items."""
    raw = os.environ.get(ENV, "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            raise ValueError(f"{ENV}={raw!r}: not a whole number of worker processes") from None
        if n < 1:
            raise ValueError(f"{ENV}={raw!r}: needs at least 1 worker process")
    else:
        n = usable_cores()
    return max(1, min(n, n_items))


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a
    Kubernetes pod's CPU limit shows up only there; the affinity is the whole node's)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    return max(1, min(n, math.ceil(quota))) if quota else n


def _cgroup_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by the cgroup's quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), None when unlimited."""
    try:
        with open(os.path.join(root, "cpu.max")) as fh:
            quota, period = fh.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as fh:
            quota_us = int(fh.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as fh:
            period_us = int(fh.read())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def map_in_processes(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """[fn(x) for x in items], in that order, spread over `worker_count` processes.

    `fn` must be a module-level function and pure in its item (no torch ops: the data stages'
    numpy work). Workers are forked from a single-threaded process (a stage's CLI); a process
    with other threads (a server, a test run) starts them from a fresh forkserver instead, as
    a fork copies other threads' locks mid-use. An exception in a worker is raised here, as in
    the loop it replaces.
    """
    # a map inside a worker runs in that worker: the cores are taken already
    n = 1 if _in_worker else worker_count(len(items))
    if n == 1:
        return [fn(x) for x in items]
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        ctx = multiprocessing.get_context("fork")
    else:
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_mark_worker) as pool:
        # a few chunks per worker: few round trips for many small items, still balanced
        return list(pool.map(fn, items, chunksize=max(1, len(items) // (4 * n))))
