"""Memory and CPU of a whole process tree from /proc, from the moment it starts (Linux).

    with TreeMonitor(proc.pid) as tree:      # start right after Popen: start-up counts
        ...
    tree.peak_mb        # the largest sum of VmRSS over the tree seen by the sampler
    tree.hwm_mb         # sum over every process ever seen of its VmHWM (its own exact peak): an upper bound
    tree.per_process    # {pid: {"cmd": ..., "hwm_mb": ...}}, e.g. mlflow's launcher beside its worker
    tree.cpu_seconds()  # utime+stime of the live tree plus what it reaped

VmHWM is the kernel's own high-water mark of one process, so a short start-up peak between two samples is
never missed for a single-process server; for a tree the sum of VmHWM can only overstate the true peak.
"""

from __future__ import annotations

import os
import threading
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children, out, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of ``pid`` in bytes (empty if it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        return {}
    return out


def command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return "?"


def cpu_seconds(root: int) -> float:
    """utime+stime of the live tree, plus what the root already reaped from dead children."""
    total = 0.0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])
        if pid == root:
            ticks += int(fields[13]) + int(fields[14])
        total += ticks / CLK_TCK
    return total


class TreeMonitor:
    """Samples the tree every ``interval`` s in a thread; keeps each process's VmHWM and the tree's RSS peak."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.peak = {"rss": 0, "anon": 0, "file": 0}
        self.per_process: dict[int, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> dict[str, int]:
        now = {"rss": 0, "anon": 0, "file": 0}
        for pid in tree(self.root):
            st = status(pid)
            if not st:
                continue
            now["rss"] += st.get("VmRSS", 0)
            now["anon"] += st.get("RssAnon", 0)
            now["file"] += st.get("RssFile", 0)
            seen = self.per_process.setdefault(pid, {"cmd": command(pid), "hwm": 0})
            seen["hwm"] = max(seen["hwm"], st.get("VmHWM", 0))
        if now["rss"] > self.peak["rss"]:
            self.peak = now
        return now

    @property
    def peak_mb(self) -> float:
        return self.peak["rss"] / MB

    @property
    def hwm_mb(self) -> float:
        return sum(p["hwm"] for p in self.per_process.values()) / MB

    def processes(self) -> list[dict[str, Any]]:
        return [{"pid": pid, "cmd": p["cmd"], "hwm_mb": round(p["hwm"] / MB, 1)} for pid, p in self.per_process.items()]

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.root)

    def __enter__(self) -> TreeMonitor:
        self.sample()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.sample()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.sample()
