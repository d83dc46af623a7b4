""":class:`ContainerRuntime` on containerd 1.6 through its ``ctr`` command line (no gRPC stack in the agent).

``ctr`` errors are converted here, at the boundary: containerd not answering (down, restarting) → TemporaryError;
"not found" → NotFound; network trouble while pulling → TemporaryError; anything else → RuntimeFailure carrying
ctr's output. containerd verifies every blob's
digest while pulling, so a corrupt blob fails the pull (RuntimeFailure) and leaves no image behind.

Hardening: every service container runs with containerd's default seccomp profile, every capability dropped
(ctr 1.6 accepts ``--cap-drop CAP_ALL`` and drops nothing, so each one is named), no new privileges (ctr's
default; never ``--allow-new-privs``), a read-only root and a pids limit. ``ctr run`` 1.6 has no pids flag and
takes a full OCI spec only with ``--config`` (and then nothing but a container id: no image, no flags), so the
limit is written into the container's own pids cgroup before ``ctr run``; runc joins that cgroup and leaves a
limit its spec does not set alone. Host network: see docs/security.md for why not CNI.

Exit codes: ``ctr task ls`` does not show them, so when a task has stopped on its own, :meth:`CtrRuntime.status`
reads the cgroup's OOM-kill counter, deletes the task (``ctr task delete`` exits with the task's code) and
remembers both.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from edge_runtime.agent.runtime import (
    AGENT_LABEL,
    ContainerSpec,
    ContainerStatus,
    ExitWatch,
    PullResult,
    RuntimeFailure,
)
from edge_runtime.errors import NotFound, TemporaryError

_TEMPORARY = re.compile(
    r"connection refused|no such host|i/o timeout|timeout|deadline exceeded|connection reset|"
    r"unexpected status.*: 5\d\d|status code 5\d\d|: 5\d\d |503 Service|502 Bad|500 Internal|EOF|TLS handshake",
    re.IGNORECASE,
)
_NOT_FOUND = re.compile(r"not found|no such|does not exist", re.IGNORECASE)
# containerd itself is down or restarting: says nothing about the image, so never a reason to block it.
_UNAVAILABLE = re.compile(
    r"transport is closing|failed to dial|error while dialing|connection error|code = Unavailable|: unavailable\b",
    re.IGNORECASE,
)
CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_PIDS_LIMIT = 64  # the service (uvicorn, onnxruntime, OpenBLAS threads) fits with room; a fork bomb does not
# Every capability Linux has (to 6.x): all dropped. Unknown names are ignored by ctr, so the list can be long.
CAPABILITIES = tuple(
    "CAP_" + name
    for name in [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ]
)


class CtrRuntime:
    """Drives ``ctr --address SOCKET --namespace NS``; one namespace per agent."""

    def __init__(
        self,
        socket: str,
        namespace: str,
        ctr: str = "ctr",
        *,
        plain_http: bool = False,
        log_dir: Path | None = None,
        pull_timeout_s: float = 900.0,
        call_timeout_s: float = 60.0,
        pids_limit: int = DEFAULT_PIDS_LIMIT,
    ) -> None:
        self.base = [ctr, "--address", socket, "--namespace", namespace]
        self.namespace = namespace
        self.plain_http = plain_http
        self.log_dir = log_dir
        self.pull_timeout_s = pull_timeout_s
        self.call_timeout_s = call_timeout_s
        self.pids_limit = pids_limit
        self._exited: dict[str, tuple[int | None, bool]] = {}

    # ── plumbing ──────────────────────────────────────────────────────────────────────────────────
    def _run(
        self, args: Sequence[str], timeout: float | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [*self.base, *args]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=timeout or self.call_timeout_s, check=False)
        except FileNotFoundError as exc:
            raise RuntimeFailure(
                f"{argv[0]} is not installed: install containerd (apt-get install containerd)."
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise TemporaryError(f"`ctr {' '.join(args)}` did not finish within {exc.timeout} s.") from exc
        if check and done.returncode != 0:
            raise self._error(args, done)
        return done

    def _error(self, args: Sequence[str], done: subprocess.CompletedProcess[bytes]) -> Exception:
        out = (done.stderr or done.stdout).decode(errors="replace").strip()
        message = f"`ctr {' '.join(args)}` failed ({done.returncode}): {out[-800:]}"
        if _UNAVAILABLE.search(out):
            return TemporaryError(f"containerd is not answering: {message} Retrying with back-off.")
        if _NOT_FOUND.search(out) and "pull" not in args:
            return NotFound(message)
        if "pull" in args and _TEMPORARY.search(out):
            return TemporaryError(message + " Retrying with back-off.")
        if "pull" in args and _NOT_FOUND.search(out):
            return NotFound(message)
        return RuntimeFailure(message)

    def _lines(self, args: Sequence[str]) -> list[str]:
        return [line for line in self._run(args).stdout.decode().splitlines() if line.strip()]

    # ── images and content ────────────────────────────────────────────────────────────────────────
    def _content_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for line in self._lines(["content", "ls"])[1:]:
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith("sha256:"):
                sizes[parts[0]] = _parse_size(parts[1])
        return sizes

    def pull(self, ref: str, platform: str) -> PullResult:
        before = self._content_sizes()
        args = ["image", "pull", "--platform", platform]
        if self.plain_http:
            args.append("--plain-http")
        self._run([*args, ref], timeout=self.pull_timeout_s)
        after = self._content_sizes()
        return PullResult(ref, sum(size for digest, size in after.items() if digest not in before))

    def has_image(self, ref: str) -> bool:
        return ref in self.list_images()

    def read_blob(self, digest: str) -> bytes:
        return self._run(["content", "get", digest]).stdout

    def remove_image(self, ref: str) -> None:
        self._run(["image", "rm", ref])

    def list_images(self) -> list[str]:
        return self._lines(["image", "ls", "-q"])

    # ── containers ────────────────────────────────────────────────────────────────────────────────
    def start(self, spec: ContainerSpec) -> None:
        args = ["run", "-d", "--net-host", "--memory-limit", str(spec.memory_bytes), "--cpus", f"{spec.cpus:g}"]
        args.append("--seccomp")  # containerd's default profile (the one Docker and Kubernetes use)
        for cap in CAPABILITIES:
            args += ["--cap-drop", cap]
        if spec.read_only:
            args.append("--read-only")
        for path in spec.tmpfs:
            args += ["--mount", f"type=tmpfs,src=tmpfs,dst={path},options=nosuid:nodev:noexec:mode=1777:size=16m"]
        for key, value in spec.env.items():
            args += ["--env", f"{key}={value}"]
        for key, value in spec.labels.items():
            args += ["--label", f"{key}={value}"]
        if spec.platform:
            args += ["--platform", spec.platform]
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = self.log_dir / f"{spec.name}.log"
            log.unlink(missing_ok=True)
            args += ["--log-uri", f"file://{log}"]
        # A leftover of an interrupted attempt at the same candidate (e.g. containerd restarted during `ctr run`,
        # which can create the container yet report failure) would make `ctr run` fail with "already exists".
        self.stop(spec.name, 0)
        self._exited.pop(spec.name, None)
        group = self._limit_pids(spec.name)
        try:
            self._run([*args, spec.image, spec.name, *spec.command])
        except BaseException:
            if group is not None:
                _remove_cgroup(group)
            raise

    def pids_cgroup(self, name: str) -> Path:
        """The pids cgroup directory of container ``name`` (ctr's default cgroup path is /<namespace>/<name>)."""
        v1 = CGROUP_ROOT / "pids"
        if v1.is_dir():
            return v1 / self.namespace / name
        return CGROUP_ROOT / self.namespace / name

    def _limit_pids(self, name: str) -> Path | None:
        """Create the container's pids cgroup with ``pids.max`` set, before runc puts the first process in it."""
        if self.pids_limit <= 0:
            return None
        group = self.pids_cgroup(name)
        try:
            if group.parent.parent == CGROUP_ROOT:  # cgroup v2: the parents must hand the pids controller down
                group.parent.mkdir(exist_ok=True)
                for parent in (CGROUP_ROOT, group.parent):
                    (parent / "cgroup.subtree_control").write_text("+pids")
            group.mkdir(parents=True, exist_ok=True)
            (group / "pids.max").write_text(str(self.pids_limit))
        except OSError as exc:
            raise RuntimeFailure(
                f"Could not set the pids limit {self.pids_limit} of container {name} in {group}: {exc}. "
                "Run the agent as root on a kernel with the pids cgroup controller, "
                "or set the limit to 0 to run without one."
            ) from exc
        return group

    def _task_table(self) -> dict[str, tuple[int, str]]:
        """``ctr task ls``: container name -> (pid, status)."""
        tasks: dict[str, tuple[int, str]] = {}
        for line in self._lines(["task", "ls"])[1:]:
            parts = line.split()
            if len(parts) >= 3:
                tasks[parts[0]] = (int(parts[1]) if parts[1].isdigit() else 0, parts[2])
        return tasks

    def _tasks(self) -> dict[str, str]:
        return {name: status for name, (_, status) in self._task_table().items()}

    def exit_watch(self, name: str) -> ExitWatch:
        """A pidfd on the task's main process: its exit (SIGKILL, OOM kill, crash) is known within milliseconds,
        where polling ``ctr`` costs two processes per look. The agent runs as root in the host PID namespace."""
        pid, state = self._task_table().get(name, (0, ""))
        if state != "RUNNING" or pid <= 0:
            raise NotFound(f"Container {name} has no running task to watch ({state or 'no task'}).")
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return _Exited()
        except OSError as exc:  # an old kernel (< 5.3) or no permission: fall back to looking at /proc
            return _ProcWatch(pid, exc)
        # The pid could have been reused between `task ls` and pidfd_open: check it is still the task's.
        if self._task_table().get(name, (0, ""))[0] != pid:
            os.close(fd)
            return _Exited()
        return _PidfdWatch(fd)

    def _info(self, name: str) -> dict[str, object]:
        info = json.loads(self._run(["container", "info", name]).stdout)
        if not isinstance(info, dict):
            raise RuntimeFailure(f"`ctr container info {name}` returned {info!r}.")
        return info

    def _oom_killed(self, name: str) -> bool:
        for file, key in (
            (CGROUP_ROOT / "memory" / self.namespace / name / "memory.oom_control", "oom_kill"),  # cgroup v1
            (CGROUP_ROOT / self.namespace / name / "memory.events", "oom_kill"),  # cgroup v2
        ):
            try:
                for line in file.read_text().splitlines():
                    k, _, v = line.partition(" ")
                    if k == key and int(v) > 0:
                        return True
            except (OSError, ValueError):
                continue
        return False

    def _reap(self, name: str) -> tuple[int | None, bool]:
        """Record a stopped task's exit code and OOM kill, then delete the task."""
        oom = self._oom_killed(name)
        done = self._run(["task", "delete", name], check=False)
        err = done.stderr.decode(errors="replace")
        # ctr 1.6 reports a non-zero exit only as a warning: `task X exit with non-zero exit code 3`.
        match = re.search(r"exit with non-zero exit code (\d+)", err)
        code: int | None = int(match.group(1)) if match else done.returncode
        if done.returncode != 0 and _NOT_FOUND.search(err):
            code = None
        self._exited[name] = (code, oom)
        return self._exited[name]

    def status(self, name: str) -> ContainerStatus:
        info = self._info(name)
        state = self._tasks().get(name)
        labels = {str(k): str(v) for k, v in dict(info.get("Labels") or {}).items()}  # type: ignore[call-overload]
        image = str(info.get("Image", ""))
        if state == "RUNNING":
            return ContainerStatus(name, image, True, labels=labels)
        if state is not None and state != "CREATED":
            code, oom = self._reap(name)
        else:
            code, oom = self._exited.get(name, (None, False))
        return ContainerStatus(name, image, False, exit_code=code, oom_killed=oom, labels=labels)

    def stop(self, name: str, timeout_s: float) -> None:
        state = self._tasks().get(name)
        if state == "RUNNING":
            if timeout_s > 0:
                self._run(["task", "kill", "--signal", "SIGTERM", name], check=False)
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline and self._tasks().get(name) == "RUNNING":
                    time.sleep(0.1)
            if self._tasks().get(name) == "RUNNING":
                self._run(["task", "kill", "--signal", "SIGKILL", name], check=False)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and self._tasks().get(name) == "RUNNING":
                    time.sleep(0.05)
        # Also when `task ls` shows none: right after a containerd restart a surviving task may not be listed
        # yet, and a container whose task is left behind cannot be recreated ("task ... already exists").
        self._run(["task", "delete", "--force", name], check=False)
        done = self._run(["container", "delete", name], check=False)
        if done.returncode != 0 and not _NOT_FOUND.search(done.stderr.decode(errors="replace")):
            raise self._error(["container", "delete", name], done)
        self._exited.pop(name, None)

    def logs(self, name: str, max_bytes: int = 2000) -> str:
        if self.log_dir is None:
            return ""
        try:
            with open(self.log_dir / f"{name}.log", "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - max_bytes))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def list_containers(self) -> list[ContainerStatus]:
        out: list[ContainerStatus] = []
        for name in self._lines(["container", "ls", "-q"]):
            try:
                status = self.status(name)
            except NotFound:
                continue
            if AGENT_LABEL in status.labels:
                out.append(status)
        return out


class _PidfdWatch:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)
        self.exited = False

    def wait(self, timeout_s: float) -> bool:
        if not self.exited and self.fd >= 0:
            self.exited = bool(self.poller.poll(max(0, int(timeout_s * 1000))))
        return self.exited

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _ProcWatch:
    """Without pidfds: look at /proc/<pid> every 50 ms (a reused pid is not noticed; the status checks are)."""

    def __init__(self, pid: int, why: OSError) -> None:
        self.pid = pid
        self.why = why

    def wait(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while os.path.exists(f"/proc/{self.pid}"):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.05, left))
        return True

    def close(self) -> None:
        pass


class _Exited:
    def wait(self, timeout_s: float) -> bool:
        return True

    def close(self) -> None:
        pass


def _remove_cgroup(group: Path) -> None:
    with contextlib.suppress(OSError):  # in use (the container started after all) or already gone
        group.rmdir()


def _parse_size(text: str) -> int:
    """``ctr content ls`` sizes: ``1.5 kB``-style is split in two columns by ctr, so parse ``12345`` or ``1.5kB``."""
    match = re.fullmatch(r"([\d.]+)\s*([kKMGT]?i?B)?", text)
    if not match:
        return 0
    value = float(match.group(1))
    unit = (match.group(2) or "B").lower().replace("ib", "b")
    factor = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}.get(unit, 1)
    return int(value * factor)
