"""Every Debian package a script or module of the repository needs is installed by ``scripts/host-deps.sh``.

A warm cache or a developer's machine hides a missing package (``arch-test`` once went unnoticed that way), so
this reads the sources instead of the machine: the commands at command position in the shell scripts and
Makefile, and the commands the Python code runs (``subprocess`` argv literals, ``shutil.which``, ``*_TOOLS``
tuples). Each must come from an Essential/required package or appear in ``TOOL_PACKAGES`` with a package that
``host-deps.sh`` installs. A new tool fails here until it is added to both.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOST_DEPS = ROOT / "scripts" / "host-deps.sh"
BUILD_RUNTIME = ROOT / "images" / "build-runtime.sh"
SHELL_SCRIPTS = [ROOT / ".ci" / "run", ROOT / ".ci" / "debian-python", HOST_DEPS, BUILD_RUNTIME]
PYTHON_TREES = ["edge_runtime", "pipeline", "registry", "otaml", "bench", "tests"]

# The external commands of the project and the Debian package that provides each.
TOOL_PACKAGES = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "docker-registry": "docker-registry",
    "buildah": "buildah",
    "skopeo": "skopeo",
    "umoci": "umoci",
    "mmdebstrap": "mmdebstrap",
    "arch-test": "arch-test",
    "qemu-aarch64-static": "qemu-user-static",
    "qemu-x86_64-static": "qemu-user-static",
    "update-binfmts": "binfmt-support",
    "iptables": "iptables",
    "iptables-restore": "iptables",
    "git": "git",
    "make": "make",
    "ip": "iproute2",
    "ss": "iproute2",
    "wrk": "wrk",
    "pg_lsclusters": "postgresql",
    "pg_ctlcluster": "postgresql",
    "pg_isready": "postgresql",
    "psql": "postgresql",
    "python3": "python3",
    "mosquitto": "mosquitto",
    "mosquitto_passwd": "mosquitto",
    "mosquitto_pub": "mosquitto-clients",
    "mosquitto_sub": "mosquitto-clients",
}
# Packages needed for what they provide besides a command: `python3 -m venv` (ensurepip) and `python3 -m pip`.
MODULE_PACKAGES = {"python3-venv", "python3-pip"}

# Shell builtins and keywords, this repository's own shell functions, and commands of Essential or
# Priority: required packages (coreutils, util-linux, mount, dpkg, apt, findutils, grep, sed, gzip, tar, mawk,
# debianutils, login, procps is *not* one: do not add it here).
NO_PACKAGE = frozenset(
    """
    if then elif else fi for while until do done case esac in function return exit
    local export set shift read printf echo cd test true false exec command trap wait break
    continue declare eval source unset readonly type hash ulimit umask kill pwd cat cp mv rm
    mkdir rmdir ln ls touch chmod chown date sleep id env basename dirname head tail cut
    sort uniq wc tr tee mktemp sha256sum seq du df stat readlink realpath nproc timeout printenv
    yes install sync flock mount umount mountpoint su unshare nsenter setpriv useradd getent
    dpkg dpkg-query apt-get apt-cache find xargs
    grep sed gzip tar awk mawk which bash sh
    """.split()  # noqa: SIM905 (a word list reads better than 100 quoted strings)
)


def host_deps_packages() -> set[str]:
    text = HOST_DEPS.read_text()
    match = re.search(r"^packages=\((.*?)\)", text, re.S | re.M)
    assert match, "scripts/host-deps.sh no longer has a packages=(...) array"
    return set(match.group(1).split())


def shell_commands(text: str, makefile: bool = False) -> set[str]:
    """Words at command position in a bash script (or in a Makefile's recipes), a deliberately plain reading."""
    if makefile:
        recipes = [line[1:].lstrip("@-") for line in text.splitlines() if line.startswith("\t")]
        text = "\n".join(recipes).replace("$(PYTHON)", "python3").replace("$$", "$")
        text = re.sub(r"\$\((?:BIN|VENV|abspath [^)]*)\)/?\S*", "", text)  # the venv's own tools
        text = re.sub(r"\$\([A-Z_]+\)", "", text)
    text = re.sub(r'"\$\{\w+\[@\]\}"', "__array__", text)  # "${BUILDAH[@]}" sub-command: not a command
    text = re.sub(r"<<-?\s*'?(\w+)'?(.*?)\n.*?^\s*\1$", r"\2", text, flags=re.S | re.M)  # here-documents
    text = re.sub(r"^\s*[\w*|./-]+\)", "", _code_only(text.replace("\\\n", " ")), flags=re.M)  # case patterns
    text = re.sub(r"\b\w+=\([^)]*\)", "", text)  # array assignments
    commands = set(re.findall(r"^\s*need_cmd (\S+)", text, re.M))  # build-runtime.sh's preflight
    for segment in re.split(r"\n|;|&&|\|\||\||\$\(|\(|\)|\{|\}|`|\bthen\b|\bdo\b|\belse\b|!", text):
        words = segment.split()
        while words and (re.match(r"^\w+=", words[0]) or words[0] in {"exec", "time", "sudo", "if", "while"}):
            words = words[1:]
        if words and words[0] in {"command", "xargs"}:
            words = [w for w in words[1:] if not w.startswith("-")]
        if words and re.fullmatch(r"[A-Za-z][\w.+-]*", words[0]):
            commands.add(words[0])
    return commands


def _code_only(text: str) -> str:
    """``text`` without comments, arithmetic and quoted strings; ``$( )`` inside double quotes stays code."""
    out: list[str] = []
    stack = ["code"]  # "code" (top level or a $( ) substitution, with its paren depth below) or "dq"
    depth: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c, context = text[i], stack[-1]
        if c == "\\":
            out.append(" ")
            i += 2
            continue
        if text.startswith("$((", i):
            end = text.find("))", i)
            i = end + 2 if end > 0 else n
            continue
        if text.startswith("$(", i):
            out.append(" ; (")
            stack.append("code")
            depth.append(0)
            i += 2
            continue
        if context == "dq":
            if c == '"':
                stack.pop()
        elif c == '"':
            stack.append("dq")
        elif c == "'":
            end = text.find("'", i + 1)
            i = end if end > 0 else n
        elif c == "#" and (i == 0 or text[i - 1] in " \t\n;"):
            end = text.find("\n", i)
            i = end if end > 0 else n
            continue
        elif c in "()" and len(stack) > 1:
            depth[-1] += 1 if c == "(" else -1
            out.append(c)
            if depth[-1] < 0:
                stack.pop()
                depth.pop()
        else:
            out.append(c)
        i += 1
    return "".join(out)


def shell_functions(text: str) -> set[str]:
    return set(re.findall(r"^\s*([\w-]+)\(\)\s*\{", text, re.M))


def python_commands(path: Path) -> set[str]:
    """Commands a module runs: argv[0] literals given to subprocess, ``shutil.which`` and ``*_TOOLS`` tuples."""
    commands: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else ""
            if name == "subprocess" and node.args and isinstance(node.args[0], ast.List | ast.Tuple):
                first = node.args[0].elts[0] if node.args[0].elts else None
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    commands.add(first.value)
            if name == "shutil" and node.func.attr == "which" and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    commands.add(arg.value)
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Tuple | ast.List)
            and any(isinstance(t, ast.Name) and t.id.endswith("_TOOLS") for t in node.targets)
        ):
            commands.update(e.value for e in node.value.elts if isinstance(e, ast.Constant))
    return {c for c in commands if "/" not in c}


def unexplained(commands: set[str], where: str, functions: frozenset[str] | set[str] = frozenset()) -> list[str]:
    packages = host_deps_packages()
    problems = []
    for command in sorted(commands - NO_PACKAGE - functions):
        package = TOOL_PACKAGES.get(command)
        if package is None:
            problems.append(f"{where}: runs {command!r}, which TOOL_PACKAGES does not map to a Debian package")
        elif package not in packages:
            problems.append(f"{where}: runs {command!r} from {package!r}, which scripts/host-deps.sh does not install")
    return problems


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_of_a_shell_script_has_its_package(script: Path) -> None:
    text = script.read_text()
    commands = shell_commands(text)
    assert commands, f"no commands read from {script}: the reader is broken"
    assert unexplained(commands, str(script.relative_to(ROOT)), shell_functions(text)) == []


def test_every_command_of_the_makefile_has_its_package() -> None:
    commands = shell_commands((ROOT / "Makefile").read_text(), makefile=True)
    assert {"python3", "test", "touch"} <= commands
    assert unexplained(commands, "Makefile") == []


def test_every_command_the_python_code_runs_has_its_package() -> None:
    problems = []
    seen: set[str] = set()
    for tree in PYTHON_TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            commands = python_commands(path)
            seen |= commands
            problems += unexplained(commands, str(path.relative_to(ROOT)))
    assert {"ctr", "containerd", "iptables", "skopeo", "docker-registry"} <= seen  # the reader still finds them
    assert problems == []


def test_the_build_preflight_names_packages_host_deps_installs() -> None:
    pairs = re.findall(r"^\s*need_cmd (\S+) (\S+)", BUILD_RUNTIME.read_text(), re.M)
    packages = host_deps_packages()
    assert ("arch-test", "arch-test") in pairs  # the package a warm cache once hid
    for command, package in pairs:
        assert package in packages or command in NO_PACKAGE, f"preflight needs {package}, host-deps lacks it"
        assert TOOL_PACKAGES.get(command, package) == package, f"preflight maps {command} to {package}"


def test_host_deps_installs_what_debian_python_needs_for_make_setup() -> None:
    assert host_deps_packages() >= MODULE_PACKAGES | set(TOOL_PACKAGES.values())


def test_the_reader_sees_through_quotes_substitutions_and_case_patterns() -> None:
    script = """#!/bin/bash
# mmdebstrap in a comment
x=$(wrk --version | cut -c1) && ip addr
for p in a b; do umoci list "$p"; done
case "$1" in
  arm64) skopeo copy ;;
esac
echo "apt-get install mosquitto, but $(containerd --version)"
python3 -c 'import iptables'
VAR=1 exec ctr run
"""
    assert shell_commands(script) >= {"wrk", "cut", "ip", "umoci", "skopeo", "containerd", "python3", "ctr"}
    assert not shell_commands(script) & {"mmdebstrap", "mosquitto", "iptables", "arm64", "a", "p"}
