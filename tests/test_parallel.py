"""thermops.parallel: the order-preserving process map of the data stages."""

from __future__ import annotations

import os
import threading

import pytest

from thermops.parallel import ENV, _cgroup_quota, map_in_processes, usable_cores, worker_count


def _pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def _fails_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"item {x} is bad")
    return x


def _nested(x: int) -> list[int]:
    # inside a pool's worker: the inner map runs in that worker, not in processes of its own
    return [pid for pid, _ in map_in_processes(_pid_and_square, [x, x + 1])]


def test_worker_count_follows_the_env_and_never_exceeds_the_items(monkeypatch):
    monkeypatch.setenv(ENV, "3")
    assert worker_count(10) == 3 and worker_count(2) == 2 and worker_count(0) == 1
    monkeypatch.delenv(ENV)
    assert worker_count(100) == usable_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    "files, cpus",
    [
        ({"cpu.max": "max 100000\n"}, None),  # cgroup v2, no limit
        ({"cpu.max": "150000 100000\n"}, 1.5),  # a pod limited to 1500m
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_a_cgroup_cpu_quota_is_read_as_cpus(tmp_path, files, cpus):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _cgroup_quota(str(tmp_path)) == cpus


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_a_bad_worker_count_is_refused_by_name(monkeypatch, raw):
    monkeypatch.setenv(ENV, raw)
    with pytest.raises(ValueError, match=ENV):
        worker_count(4)


def test_results_keep_the_items_order_across_processes(monkeypatch):
    monkeypatch.setenv(ENV, "2")
    out = map_in_processes(_pid_and_square, list(range(40)))
    assert [sq for _, sq in out] == [i * i for i in range(40)]
    assert os.getpid() not in {pid for pid, _ in out}  # the work left this process


def test_one_worker_runs_in_this_process(monkeypatch):
    monkeypatch.setenv(ENV, "1")
    assert {pid for pid, _ in map_in_processes(_pid_and_square, [1, 2, 3])} == {os.getpid()}


def test_a_worker_error_reaches_the_caller(monkeypatch):
    monkeypatch.setenv(ENV, "2")
    with pytest.raises(ValueError, match="item 3 is bad"):
        map_in_processes(_fails_on_three, list(range(6)))


def test_a_map_inside_a_worker_runs_in_that_worker(monkeypatch):
    monkeypatch.setenv(ENV, "2")
    for inner in map_in_processes(_nested, [10, 20]):
        assert len(set(inner)) == 1 and os.getpid() not in inner


def test_a_process_with_other_threads_still_gets_its_results(monkeypatch):
    # a live thread (as in a server or a test run): the workers come from a forkserver
    monkeypatch.setenv(ENV, "2")
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    try:
        out = map_in_processes(_pid_and_square, list(range(10)))
    finally:
        stop.set()
    assert [sq for _, sq in out] == [i * i for i in range(10)] and os.getpid() not in {p for p, _ in out}
