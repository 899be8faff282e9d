"""The calibration watcher's retrain runner: one retrain as one process group, with a written record.

    python -m pipeline.supervise --record .thermops/retrains/ID -- python -m dvc repro

The watcher starts this module in a new session, so it leads a process group that
holds every process of the retrain (`dvc repro`, the stage it runs, that stage's
workers): the watcher stops a retrain by signalling the group, never one process.
Standard library only, so it starts fast.

Files (`--record` is their common prefix):

- `ID.start.json`: written first, atomically: pid, process start time (clock ticks
  since boot), boot id, command. A watcher that restarts finds the retrain by it
  and adopts it if it is still that process (same pid, start time and boot).
- `ID.log`: the command's stdout and stderr (the watcher follows it).
- `ID.exit.json`: written last, atomically: the command's exit status, the signal
  that stopped the retrain if one did. No exit record means the runner itself was
  killed (SIGKILL): the retrain was interrupted, it did not fail.

A SIGTERM, SIGINT or SIGHUP sent to the runner alone is passed on to its whole
group; the runner then waits for the command and writes the exit record.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def boot_id() -> str:
    """This boot's id (Linux); a pid of another boot is another process."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_ticks(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def is_running(pid: int | None, ticks: int | None, boot: str | None) -> bool:
    """Whether `pid` is still the process that was recorded (same start time, same boot), not a zombie."""
    if not pid or ticks is None or (boot or "") != boot_id():
        return False
    if start_ticks(pid) != ticks:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def write_record(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def record_paths(prefix: Path) -> tuple[Path, Path, Path]:
    """(start record, log, exit record) of a retrain."""
    return (
        prefix.with_name(prefix.name + ".start.json"),
        prefix.with_name(prefix.name + ".log"),
        prefix.with_name(prefix.name + ".exit.json"),
    )


def run(prefix: Path, cmd: list[str], cwd: Path) -> int:
    """Run `cmd` in this process group, record start and exit; returns the exit status to exit with."""
    start, log, exit_ = record_paths(prefix)
    stopped: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stopped.append(signum)
        signal.signal(signum, signal.SIG_IGN)  # the group signal below reaches this process too
        os.killpg(os.getpgrp(), signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    pid = os.getpid()
    write_record(
        start,
        {
            "pid": pid,
            "pgid": os.getpgrp(),
            "start_ticks": start_ticks(pid),
            "boot_id": boot_id(),
            "cmd": cmd,
            "cwd": str(cwd),
            "started_at": now_iso(),
        },
    )
    with open(log, "ab", buffering=0) as out:
        if stopped:  # stopped before the command started: do not start it
            write_record(exit_, {"exit_code": None, "signal": stopped[0], "finished_at": now_iso()})
            return 128 + stopped[0]
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        except OSError as err:
            out.write(f"error: cannot start {cmd[0]}: {err}\n".encode())
            write_record(exit_, {"exit_code": 127, "signal": None, "start_error": str(err), "finished_at": now_iso()})
            return 127
        while True:
            try:
                code = proc.wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for safety
                continue
    write_record(
        exit_,
        {
            "exit_code": code,
            "signal": stopped[0] if stopped else (-code if code < 0 else None),
            "finished_at": now_iso(),
        },
    )
    if stopped:
        return 128 + stopped[0]
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.supervise", description=__doc__.splitlines()[0])
    ap.add_argument("--record", type=Path, required=True, help="common prefix of the start/log/exit files")
    ap.add_argument("--cwd", type=Path, default=Path.cwd(), help="where the command runs")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command given (put it after --)")
    sys.exit(run(args.record, cmd, args.cwd))


if __name__ == "__main__":
    main()
