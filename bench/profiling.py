"""Processes under load: peak RSS of a process tree, and py-spy profiles when installed."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import OUT_DIR, ROOT


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                pass
    return sorted(set(pids))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process tree: what a server costs, whatever else the machine runs."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> dict:
    """VmHWM (peak resident set) of each process in the tree, in MiB."""
    per = {}
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    per[p] = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
    return {"max_process_mib": max(per.values(), default=None), "tree_sum_mib": round(sum(per.values()), 1),
            "processes": len(per)}


def py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy record --gil (only samples holding the GIL: where the CPU goes, idle threads left
    out) as raw collapsed stacks, for a bounded time; summarized after."""

    def __init__(self, enabled: bool):
        self.tool = py_spy() if enabled else None
        self.jobs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, pid: int, seconds: float) -> None:
        if not self.tool:
            return
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        out = OUT_DIR / f"profile-{name}.txt"
        argv = [self.tool, "record", "--pid", str(pid), "--duration", str(max(int(seconds), 1)), "--rate", "200",
                "--gil", "--format", "raw", "--output", str(out), "--nonblocking"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.jobs.append((name, proc, out))

    def finish(self) -> dict:
        summaries = {}
        for name, proc, out in self.jobs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            summaries[name] = summarize_profile(out)
        self.jobs.clear()
        return summaries


def summarize_profile(path: Path, top: int = 12) -> dict:
    """Self time and inclusive time per function from py-spy's collapsed stacks."""
    if not path.exists():
        return {"error": "no profile written"}
    self_time, inclusive, total = {}, {}, 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
                  for f in stack.split(";")]
        for frame in set(frames[1:]):
            inclusive[frame] = inclusive.get(frame, 0) + n
        if frames:
            self_time[frames[-1]] = self_time.get(frames[-1], 0) + n
    share = lambda d: [(k, round(100 * v / total, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]  # noqa: E731
    return {"samples": total, "file": str(path.relative_to(ROOT)), "self_pct": share(self_time),
            "inclusive_pct": share(inclusive)}
