"""Private, throw-away instances of the real infrastructure on this machine: a docker-registry, a containerd and
a Mosquitto MQTT broker (the fleet channel).

Used by ``otaml demo`` and by the test fixtures (``tests/fixtures/oci_registry.py``, ``containerd.py``), so the
demo and the tests start them the same way::

    with LocalRegistry(workdir / "registry") as address:              # "127.0.0.1:PORT", plain HTTP, no auth
        with LocalContainerd(workdir / "ctrd", "otaml-demo") as ctrd:  # ContainerdInstance(socket, namespace)
            socket, namespace = ctrd
            ctrd.ctr("image", "ls")
        with LocalBroker(workdir / "mqtt", devices=["pi-1", "pi-2"]) as broker:  # BrokerInstance(host, port)
            broker.password_file("pi-1")                                       # the device's credentials

Each keeps everything (config, storage, log) under its directory, runs as a child of this process and is
stopped on exit, also after an error; ``stop()`` is idempotent. A component that cannot start raises
:class:`LocalStackError` naming what is missing and how to install it. :func:`missing_tools` tells callers
up front (the demo's mode selection, ``require()`` in tests). :func:`build_runtime_image` runs
``images/build-runtime.sh`` (the base runtime image, no model) the way the demo and the fixtures need it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

import httpx

from edge_runtime.errors import OtamlError
from otaml.ports import free_port

REGISTRY_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: {address}
"""

CONTAINERD_CONFIG = """\
version = 2
root = "{dir}/root"
state = "{dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{dir}/containerd.sock"

[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"

[debug]
  address = "{dir}/debug.sock"
"""

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / "images" / "build-runtime.sh"
BUILD_TIMEOUT_S = 60 * 60  # a fresh machine: ~10-15 min (mmdebstrap + buildah); cached runs take seconds

# sun_path is 108 bytes on Linux; containerd also creates "<socket>.ttrpc".
MAX_SOCKET_PATH = 100

INSTALL = {
    "docker-registry": "apt-get install -y docker-registry",
    "containerd": "apt-get install -y containerd runc",
    "ctr": "apt-get install -y containerd",
    "runc": "apt-get install -y runc",
    "mosquitto": "apt-get install -y mosquitto",
    "mosquitto_passwd": "apt-get install -y mosquitto",
}


class LocalStackError(OtamlError):
    """A local registry or containerd could not be started (missing tool, no root, start-up failure)."""


# Daemons Debian installs in sbin (mosquitto), which a non-root user's PATH does not hold.
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def find_tool(tool: str) -> str | None:
    """``tool``'s path: on PATH, else in the sbin directories; ``None`` when it is in neither."""
    return shutil.which(tool) or shutil.which(tool, path=SBIN)


def missing_tools(tools: tuple[str, ...]) -> list[str]:
    """The tools of ``tools`` that :func:`find_tool` does not find."""
    return [tool for tool in tools if find_tool(tool) is None]


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class LocalRegistry:
    """A CNCF distribution registry (``docker-registry``) on a free loopback port; ``with`` yields its address."""

    def __init__(self, workdir: str | os.PathLike[str], *, binary: str = "docker-registry", timeout_s: float = 15.0):
        self.workdir = Path(workdir)
        self.binary = binary
        self.timeout_s = timeout_s
        self.address = ""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "registry.log"

    def start(self) -> str:
        """Start the registry and wait until ``GET /v2/`` answers; return ``127.0.0.1:PORT``."""
        binary = find_tool(self.binary)
        if binary is None:
            raise LocalStackError(f"{self.binary} is not installed. Install it: {INSTALL['docker-registry']}.")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.address = f"127.0.0.1:{free_port()}"
        config = self.workdir / "config.yml"
        config.write_text(REGISTRY_CONFIG.format(root=self.workdir / "storage", address=self.address))
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen([binary, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT)
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise
        return self.address

    def _wait(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise LocalStackError(
                    f"docker-registry exited with {self.process.returncode} at start; its log ({self.log}):\n"
                    f"{_tail(self.log)}"
                )
            try:
                if httpx.get(f"http://{self.address}/v2/", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise LocalStackError(
            f"docker-registry did not answer on {self.address} within {self.timeout_s:g} s; its log ({self.log}):\n"
            f"{_tail(self.log)}"
        )

    def stop(self) -> None:
        _stop_process(self.process, 10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ContainerdInstance(NamedTuple):
    """A running containerd: ``socket, namespace = instance``; ``instance.ctr(...)`` runs ``ctr`` against it."""

    socket: str
    namespace: str

    def ctr(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ctr --address SOCKET -n NAMESPACE ARGS...`` and return the completed process (text)."""
        return subprocess.run(
            ["ctr", "--address", self.socket, "-n", self.namespace, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def remove_all(self) -> None:
        """Kill and delete every task and container left in the namespace, so their shims exit."""
        listed = self.ctr("containers", "list", "--quiet", check=False).stdout.split()
        for container_id in listed:
            self.ctr("task", "kill", "--signal", "SIGKILL", container_id, check=False)
        for container_id in listed:
            # A killed task needs a moment to be reaped before it can be deleted.
            for _ in range(50):
                if self.ctr("task", "delete", container_id, check=False).returncode == 0:
                    break
                if container_id not in self.ctr("task", "list", "--quiet", check=False).stdout.split():
                    break
                time.sleep(0.1)
            self.ctr("containers", "delete", container_id, check=False)


class LocalContainerd:
    """A private containerd daemon (own root, state and sockets under ``workdir``; overlayfs, runc).

    ``with LocalContainerd(workdir, namespace) as instance`` yields a :class:`ContainerdInstance`; on exit every
    container left in ``namespace`` is removed and the daemon stopped. Needs root, ``containerd``, ``ctr``, ``runc``.
    """

    TOOLS = ("containerd", "ctr", "runc")

    def __init__(self, workdir: str | os.PathLike[str], namespace: str = "otaml", *, timeout_s: float = 20.0):
        self.workdir = Path(workdir)
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.instance: ContainerdInstance | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "containerd.log"

    def start(self) -> ContainerdInstance:
        if os.geteuid() != 0:
            raise LocalStackError("containerd needs root here (mounts, cgroups); run as root, e.g. with sudo.")
        missing = missing_tools(self.TOOLS)
        if missing:
            how = "; ".join(dict.fromkeys(INSTALL[t] for t in missing))
            raise LocalStackError(f"{', '.join(missing)} not installed. Install: {how}.")
        self.workdir = self.workdir.resolve()
        sock = self.workdir / "containerd.sock"
        if len(str(sock)) > MAX_SOCKET_PATH:
            raise LocalStackError(
                f"containerd's socket path {sock} is {len(str(sock))} bytes; unix sockets allow about "
                f"{MAX_SOCKET_PATH}. Use a shorter work directory (e.g. under /tmp)."
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "config.toml").write_text(CONTAINERD_CONFIG.format(dir=self.workdir))
        self.instance = ContainerdInstance(str(sock), self.namespace)
        self._spawn(self.instance)
        return self.instance

    def _spawn(self, instance: ContainerdInstance) -> None:
        with open(self.log, "ab") as out:
            # Its own session: Ctrl-C in a terminal reaches us, and we stop it in order (containers first).
            self.process = subprocess.Popen(
                ["containerd", "--config", str(self.workdir / "config.toml")],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait(instance)
        except BaseException:
            self.stop()
            raise

    def restart(self) -> None:
        """Stop the daemon alone and start it again, as a device's containerd restarts: running containers
        (their shims) survive, and containerd finds them again."""
        if self.instance is None:
            raise LocalStackError("containerd was never started; call start() first.")
        _stop_process(self.process, 20)
        self._spawn(self.instance)

    def _wait(self, instance: ContainerdInstance) -> None:
        deadline = time.monotonic() + self.timeout_s
        while instance.ctr("version", check=False, timeout=10).returncode != 0:
            if self.process is not None and self.process.poll() is not None:
                raise LocalStackError(
                    f"containerd exited with {self.process.returncode} at start; its log ({self.log}):\n"
                    f"{_tail(self.log)}"
                )
            if time.monotonic() > deadline:
                raise LocalStackError(
                    f"containerd did not answer on {instance.socket} within {self.timeout_s:g} s; its log:\n"
                    f"{_tail(self.log)}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Remove the namespace's containers (their shims outlive the daemon otherwise), then stop containerd."""
        try:
            if self.instance is not None and self.process is not None and self.process.poll() is None:
                self.instance.remove_all()
        finally:
            _stop_process(self.process, 20)

    def __enter__(self) -> ContainerdInstance:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


BROKER_CONFIG = """\
listener {port} 127.0.0.1
{tls}allow_anonymous false
password_file {dir}/passwords
acl_file {dir}/acl
persistence false
# Every fleet message is at most 4,096 bytes (MAX_MESSAGE_BYTES): the broker refuses anything far larger.
max_packet_size 8192
user {user}
log_dest file {dir}/mosquitto.log
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
"""

# The fleet's access rules (docs/fleet.md). Mosquitto applies ``pattern`` lines to every user, ``%u`` being the
# username: a device (username = device id) may write only its own four topics (edge_runtime.fleet.messages.KINDS),
# in any fleet, nothing below them; it reads nothing. The controller reads every fleet topic and writes only the
# control topics.
BROKER_ACL = """\
pattern write otaml/+/devices/%u/state
pattern write otaml/+/devices/%u/availability
pattern write otaml/+/devices/%u/events
pattern write otaml/+/devices/%u/field

user {controller}
topic read otaml/#
topic write otaml/+/control/#
"""


TLS_FILES = (("cafile", "ca.pem"), ("certfile", "server.pem"), ("keyfile", "server.key"))


def write_tls(directory: Path) -> None:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost signed by it (a day's validity)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "otaml localstack CA")])

    def build(subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca = (
        build(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "server.key"
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


class BrokerInstance(NamedTuple):
    """A running broker: ``host, port = instance``."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class LocalBroker:
    """A private Mosquitto 2.0 on a free loopback port: no anonymous clients, one user per device plus the
    controller, the fleet ACL (a device writes only its own topics), persistence off.

    ``with LocalBroker(workdir, devices=[...]) as instance`` yields a :class:`BrokerInstance`. Credentials:
    :meth:`password` / :meth:`password_file` (mode 0600, the form a device's ``[fleet] password_file`` reads).
    :meth:`restart` stops it and starts it again on the same port (a broker outage; retained messages are lost,
    as persistence is off). ``tls=True``: the listener speaks TLS only, with a server certificate for 127.0.0.1
    signed by a throw-away CA (:attr:`ca_file`, for the clients' ``tls_ca``). Needs ``mosquitto`` (Debian package
    ``mosquitto``).
    """

    TOOLS = ("mosquitto", "mosquitto_passwd")
    CONTROLLER = "controller"

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        devices: list[str] | tuple[str, ...] = (),
        *,
        controller: str = CONTROLLER,
        tls: bool = False,
        timeout_s: float = 10.0,
    ):
        self.workdir = Path(workdir)
        self.tls = tls
        self.controller = controller
        self.users = [controller, *devices]
        self.timeout_s = timeout_s
        self.instance: BrokerInstance | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._passwords: dict[str, str] = {}

    @property
    def log(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def ca_file(self) -> Path:
        """The CA certificate (PEM) that signed the TLS broker's certificate."""
        return self.workdir / "tls" / "ca.pem"

    def password(self, user: str) -> str:
        """The password of ``user`` (a device id or the controller)."""
        if user not in self._passwords:
            raise LocalStackError(f"the broker has no user {user!r}; known: {', '.join(self.users)}.")
        return self._passwords[user]

    def password_file(self, user: str) -> Path:
        """A file (mode 0600) holding ``user``'s password and nothing else."""
        path = self.workdir / "credentials" / f"{user}.password"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(self.password(user) + "\n")
        return path

    def start(self) -> BrokerInstance:
        """Write the password file (hashed by ``mosquitto_passwd -U``), the ACL and the config, start Mosquitto
        and wait until it accepts TCP connections; return ``BrokerInstance(host, port)``."""
        missing = missing_tools(self.TOOLS)
        if missing:
            how = "; ".join(dict.fromkeys(INSTALL[t] for t in missing))
            raise LocalStackError(f"{', '.join(missing)} not installed. Install: {how}.")
        self.workdir = self.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for user in self.users:
            self._passwords.setdefault(user, secrets.token_urlsafe(18))
        passwords = self.workdir / "passwords"
        passwords.touch(mode=0o600)
        passwords.write_text("".join(f"{u}:{self._passwords[u]}\n" for u in self.users))
        done = subprocess.run(
            [self._tool("mosquitto_passwd"), "-U", str(passwords)], capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise LocalStackError(f"mosquitto_passwd -U {passwords} failed: {(done.stderr or done.stdout).strip()}")
        (self.workdir / "acl").write_text(BROKER_ACL.format(controller=self.controller))
        port = self.instance.port if self.instance is not None else free_port()
        self.instance = BrokerInstance("127.0.0.1", port)
        # Run as root, Mosquitto drops to the user "mosquitto", which cannot read a private work directory:
        # it runs as whoever started it instead.
        user = pwd.getpwuid(os.geteuid()).pw_name
        config = self.workdir / "mosquitto.conf"
        tls = ""
        if self.tls:
            if not self.ca_file.is_file():
                write_tls(self.workdir / "tls")
            tls = "".join(f"{k} {self.workdir / 'tls' / f}\n" for k, f in TLS_FILES)
        config.write_text(BROKER_CONFIG.format(port=port, dir=self.workdir, user=user, tls=tls))
        self._spawn(config)
        return self.instance

    @staticmethod
    def _tool(name: str) -> str:
        path = find_tool(name)
        if path is None:
            raise LocalStackError(f"{name} is not installed. Install it: {INSTALL[name]}.")
        return path

    def _spawn(self, config: Path) -> None:
        self.process = subprocess.Popen(
            [self._tool("mosquitto"), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise

    def _wait(self) -> None:
        if self.instance is None:
            raise LocalStackError("the broker was never configured; call start().")
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                stderr = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise LocalStackError(
                    f"mosquitto exited with {self.process.returncode} at start: {stderr.strip()}\n"
                    f"its log ({self.log}):\n{_tail(self.log)}"
                )
            with contextlib.suppress(OSError), socket.create_connection(self.instance, timeout=1.0):
                return
            time.sleep(0.05)
        raise LocalStackError(
            f"mosquitto did not listen on {self.instance.address} within {self.timeout_s:g} s; its log "
            f"({self.log}):\n{_tail(self.log)}"
        )

    def restart(self) -> None:
        """Stop the broker and start it again on the same port and with the same users."""
        if self.instance is None:
            raise LocalStackError("the broker was never started; call start() first.")
        self.stop()
        self.start()

    def stop(self) -> None:
        _stop_process(self.process, 10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()

    def __enter__(self) -> BrokerInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build_runtime_image(push: str | None = None, log: Path | None = None, timeout_s: float = BUILD_TIMEOUT_S) -> str:
    """Run ``images/build-runtime.sh`` (cached under ~/.cache/otaml), pushing to ``push`` if given.

    Returns ``<layout dir>:<tag>`` of the built index. Its progress goes to ``log``. Interrupted (Ctrl-C, an
    error, the timeout), it stops the whole build (buildah, mmdebstrap), not only the script.
    """
    command = ["bash", str(BUILD_SCRIPT)] + (["--push", push] if push else [])
    with open(log or os.devnull, "w") as err:
        # Its own process group, so stopping it reaches buildah and mmdebstrap too, not only bash.
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, start_new_session=True
        )
        try:
            out, _ = process.communicate(timeout=timeout_s)
        except BaseException as exc:
            _kill_group(process)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise LocalStackError(f"images/build-runtime.sh took over {timeout_s:g} s; see {log}.") from exc
            raise
    if process.returncode != 0:
        tail = _tail(log) if log else "(no log kept)"
        raise LocalStackError(f"images/build-runtime.sh failed ({process.returncode}); end of {log}:\n{tail}")
    lines = [x for x in out.splitlines() if x.startswith("OCI_LAYOUT=")]
    if not lines:
        raise LocalStackError("images/build-runtime.sh printed no OCI_LAYOUT= line; is the script up to date?")
    return lines[-1].removeprefix("OCI_LAYOUT=")


def _kill_group(process: subprocess.Popen[str]) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
