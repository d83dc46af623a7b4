"""The ctr driver's conversions at the boundary (the real driver runs in test_agent_containerd.py)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from edge_runtime.agent import ctr
from edge_runtime.agent.ctr import CAPABILITIES, CtrRuntime, _parse_size, _PidfdWatch, _ProcWatch
from edge_runtime.agent.runtime import ContainerSpec, RuntimeFailure
from edge_runtime.errors import NotFound, TemporaryError


@pytest.mark.parametrize(
    ("text", "size"), [("400B", 400), ("57.81MB", 57_810_000), ("1.5kB", 1500), ("2KiB", 2000), ("?", 0)]
)
def test_content_sizes_are_parsed(text: str, size: int) -> None:
    assert _parse_size(text) == size


def _done(args: list[str], code: int, err: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.CompletedProcess(args, code, b"", err.encode())


@pytest.mark.parametrize(
    ("args", "err", "kind"),
    [
        (["image", "pull", "x"], "dial tcp 127.0.0.1:5000: connect: connection refused", TemporaryError),
        (["image", "pull", "x"], "unexpected status from GET request: 503 Service Unavailable", TemporaryError),
        (
            ["image", "pull", "x"],
            "failed commit on ref: unexpected commit digest sha256:ab, expected sha256:cd",
            RuntimeFailure,
        ),
        (["image", "pull", "x"], "127.0.0.1:5000/r@sha256:aa: not found", NotFound),
        (["container", "info", "c"], 'container "c" in namespace "n": not found', NotFound),
        (["run", "-d", "img", "c"], "OCI runtime create failed: runc create failed", RuntimeFailure),
        # containerd restarting or down: never a verdict on the image (it must not be blocked for it).
        (["run", "-d", "img", "c"], "ctr: transport is closing: unavailable", TemporaryError),
        (
            ["task", "ls"],
            'ctr: failed to dial "/run/c.sock": connection error: desc = "transport: Error while dialing: dial unix '
            '/run/c.sock: connect: no such file or directory"',
            TemporaryError,
        ),
    ],
)
def test_ctr_errors_become_types_the_agent_branches_on(args: list[str], err: str, kind: type) -> None:
    error = CtrRuntime("/run/c.sock", "otaml")._error(args, _done(args, 1, err))
    assert type(error) is kind
    assert err[:40] in str(error)


def test_run_arguments_harden_the_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    monkeypatch.setattr(subprocess, "run", fake_run)
    (tmp_path / "cgroup" / "pids").mkdir(parents=True)  # cgroup v1 layout
    monkeypatch.setattr(ctr, "CGROUP_ROOT", tmp_path / "cgroup")
    runtime = CtrRuntime("/run/c.sock", "otaml", log_dir=tmp_path, pids_limit=48)
    runtime.start(
        ContainerSpec(
            name="svc",
            image="r@sha256:aa",
            env={"OTAML_PORT": "18081"},
            memory_bytes=100 << 20,
            cpus=0.25,
            platform="linux/arm64",
            labels={"io.otaml.agent": "1"},
        )
    )
    argv = seen[-1]
    assert argv[:5] == ["ctr", "--address", "/run/c.sock", "--namespace", "otaml"]
    assert argv[-2:] == ["r@sha256:aa", "svc"]
    for flag in (
        ["--read-only"],
        ["--net-host"],
        ["--memory-limit", str(100 << 20)],
        ["--cpus", "0.25"],
        ["--env", "OTAML_PORT=18081"],
        ["--platform", "linux/arm64"],
    ):
        i = argv.index(flag[0])
        assert argv[i : i + len(flag)] == flag
    assert any(a.startswith("type=tmpfs,src=tmpfs,dst=/tmp,") for a in argv)
    assert "--user" not in argv  # the image's (non-root) user applies
    assert "--seccomp" in argv
    assert "--allow-new-privs" not in argv
    assert "--privileged" not in argv
    dropped = {argv[i + 1] for i, a in enumerate(argv) if a == "--cap-drop"}
    assert dropped == set(CAPABILITIES)
    assert {"CAP_SYS_ADMIN", "CAP_NET_RAW", "CAP_SETUID"} <= dropped
    assert (tmp_path / "cgroup" / "pids" / "otaml" / "svc" / "pids.max").read_text() == "48"


def test_the_pids_limit_is_set_on_cgroup_v2_and_a_failed_run_still_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        code = 1 if "run" in argv else 0
        return subprocess.CompletedProcess(argv, code, b"", b"runc create failed" if code else b"")

    monkeypatch.setattr(subprocess, "run", failing_run)
    root = tmp_path / "cgroup"
    root.mkdir()
    monkeypatch.setattr(ctr, "CGROUP_ROOT", root)
    runtime = CtrRuntime("/run/c.sock", "otaml")
    assert runtime.pids_cgroup("svc") == root / "otaml" / "svc"
    with pytest.raises(RuntimeFailure, match="runc create failed"):
        runtime.start(ContainerSpec(name="svc", image="r@sha256:aa"))
    assert (root / "cgroup.subtree_control").read_text() == "+pids"
    assert (root / "otaml" / "cgroup.subtree_control").read_text() == "+pids"
    assert (root / "otaml" / "svc" / "pids.max").read_text() == "64"


def test_a_pids_limit_that_cannot_be_set_names_the_cgroup_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: subprocess.CompletedProcess(argv, 0, b"", b""))
    (tmp_path / "cgroup").write_text("not a directory")
    monkeypatch.setattr(ctr, "CGROUP_ROOT", tmp_path / "cgroup")
    with pytest.raises(RuntimeFailure, match=r"pids limit 64 of container svc .*set the limit to 0"):
        CtrRuntime("/run/c.sock", "otaml").start(ContainerSpec(name="svc", image="r@sha256:aa"))


def test_the_exit_watch_fires_when_the_process_is_killed_not_before() -> None:
    for make in (lambda pid: _PidfdWatch(os.pidfd_open(pid)), lambda pid: _ProcWatch(pid, OSError("test"))):
        process = subprocess.Popen(["sleep", "60"])
        watch = make(process.pid)
        try:
            assert watch.wait(0.05) is False
            os.kill(process.pid, signal.SIGKILL)
            if isinstance(watch, _ProcWatch):
                process.wait()  # /proc/<pid> goes only once the zombie is reaped (containerd's shim reaps)
            assert watch.wait(30) is True
            assert watch.wait(0) is True
        finally:
            watch.close()
            process.kill()
            process.wait()
