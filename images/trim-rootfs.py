#!/usr/bin/env python3
"""Trim a Debian root filesystem down to what the otaml scoring service runs: Python and its shared libraries.

    python3 images/trim-rootfs.py ROOTFS [--keep PKG,...] [--drop PKG,...]

images/build-runtime.sh runs it (as an mmdebstrap customize hook, natively, for any target architecture) on the
runtime base. Four steps:

1. Packages: everything outside the dependency closure of ``--keep`` (Depends and Pre-Depends, from the rootfs's
   own dpkg database) is removed, and so are the ``--drop`` packages even inside it (dpkg and tar, which python3
   pre-depends on for its maintainer scripts). Their files go and their records leave ``var/lib/dpkg`` too, so
   an image scanner sees exactly what is there. The Essential set that goes (perl, coreutils, util-linux, PAM,
   login, ...) is never run in the container: its entrypoint execs python3 directly.
2. Standard library: modules a service never imports (documentation data, the test suite, sqlite3, dbm, curses,
   readline, nis, CJK codecs, turtle, venv, C test modules), then the shared libraries only they used.
3. Bytecode only: the standard library is compiled by the rootfs's own python3 (chroot; qemu for arm64) and
   keeps only its sourceless ``x.pyc`` files: 7 MB less, and no module is compiled again at every start-up on a
   read-only root (Debian leaves half of them uncompiled). Tracebacks inside the standard library name file
   and line without printing it.
4. A check: every ELF file left must find each shared library it needs (DT_NEEDED) in the rootfs, or the
   script fails and names them. The runtime tests then run the image for real (amd64 and arm64).

Only the standard library is used: it runs on the build machine's python3 (Debian's 3.11 is enough).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

# What the runtime needs: the interpreter and its standard library (with their shared libraries), the C++
# runtime onnxruntime links against, /bin/sh for a shell when debugging, os-release and passwd for tools.
# Not libc-bin (ldconfig, localedef, locale data): the loader's cache is already written, and Python runs in
# UTF-8 mode under the C locale.
KEEP = ("python3-minimal", "libpython3.11-stdlib", "libstdc++6", "dash", "base-files", "base-passwd")
# Inside the closure, but unused: dpkg and tar serve python3's maintainer scripts; the others are the shared
# libraries of the standard-library modules removed below (sqlite3, dbm, curses, readline, nis).
DROP = (
    "dpkg",
    "tar",
    "libsqlite3-0",
    "libdb5.3",
    "libncursesw6",
    "libreadline8",
    "readline-common",
    "libtinfo6",
    "libnsl2",
    "libtirpc3",
    "libtirpc-common",
    "libgssapi-krb5-2",
    "libkrb5-3",
    "libk5crypto3",
    "libkrb5support0",
    "libcom-err2",
    "libkeyutils1",
)
PYTHON = "usr/lib/python3.11"
STDLIB_UNUSED = (
    "pydoc_data",
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "turtle.py",
    "lib2to3",
    "ensurepip",
    "venv",
    "sqlite3",
    "dbm",
    "curses",
    "rlcompleter.py",
    "lib-dynload/_sqlite3.*",
    "lib-dynload/_dbm.*",
    "lib-dynload/_gdbm.*",
    "lib-dynload/_curses*",
    "lib-dynload/readline.*",
    "lib-dynload/nis.*",
    "lib-dynload/_test*",
    "lib-dynload/_xxtestfuzz*",
    "lib-dynload/xxlimited*",
    "lib-dynload/ossaudiodev*",
    "lib-dynload/_codecs_*",
    "lib-dynload/_multibytecodec*",
)
LIB_DIRS = ("usr/lib", "usr/lib64", "lib", "lib64", "usr/local/lib")
# Mounted by mmdebstrap while its hooks run; never part of the image.
VIRTUAL = ("proc", "sys", "dev")


def walk(root: Path, top: Path | None = None) -> list[Path]:
    """Every path under ``top`` (default ``root``), not following links, skipping ``root``'s virtual filesystems."""
    found = []
    for directory, dirnames, filenames in os.walk(top or root):
        if Path(directory) == root:
            dirnames[:] = [d for d in dirnames if d not in VIRTUAL]
        found += [Path(directory, name) for name in dirnames + filenames]
    return found


class TrimError(Exception):
    """The rootfs is not what this script expects, or trimming it would leave a library missing."""


def parse_status(text: str) -> list[dict[str, str]]:
    """The stanzas of a dpkg status file as field dicts (continuation lines joined)."""
    stanzas = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            stanzas.append(fields)
    return stanzas


def format_stanza(fields: dict[str, str]) -> str:
    return "".join(f"{k}: {v}\n" if not v.startswith("\n") else f"{k}:{v}\n" for k, v in fields.items())


def dependencies(fields: dict[str, str], installed: set[str]) -> set[str]:
    """Installed packages ``fields`` depends on (the first installed alternative of each relation)."""
    deps = set()
    for field in ("Pre-Depends", "Depends"):
        for relation in fields.get(field, "").split(","):
            for alternative in relation.split("|"):
                name = alternative.strip().split(" ")[0].split(":")[0]
                if name in installed:
                    deps.add(name)
                    break
    return deps


def closure(stanzas: list[dict[str, str]], keep: tuple[str, ...], drop: tuple[str, ...] = ()) -> set[str]:
    """``keep`` and everything they depend on, not passing through ``drop`` (whose own dependencies go too)."""
    by_name = {s["Package"]: s for s in stanzas}
    missing = [k for k in keep if k not in by_name]
    if missing:
        raise TrimError(f"--keep names packages the rootfs does not have: {missing}; install them (--include).")
    seen: set[str] = set()
    todo = list(keep)
    while todo:
        name = todo.pop()
        if name not in seen and name not in drop:
            seen.add(name)
            todo += dependencies(by_name[name], set(by_name))
    return seen


def info_files(root: Path, package: str) -> list[Path]:
    info = root / "var/lib/dpkg/info"
    return sorted(p for p in info.iterdir() if re.fullmatch(rf"{re.escape(package)}(:[a-z0-9]+)?\.[\w-]+", p.name))


def listed_paths(root: Path, package: str) -> list[str]:
    for path in info_files(root, package):
        if path.suffix == ".list":
            return [line.strip() for line in path.read_text().splitlines() if line.strip() not in ("", "/.")]
    return []


def inside(root: Path, path: str) -> Path | None:
    """``root/path`` with its parent resolved inside the rootfs (merged-/usr links), or None if it leaves it."""
    parent = Path(os.path.realpath(root / path.lstrip("/").rsplit("/", 1)[0])) if "/" in path.strip("/") else root
    if parent != root and root not in parent.parents:
        return None
    return parent / path.rstrip("/").rsplit("/", 1)[-1]


def remove_packages(root: Path, remove: set[str], keep: set[str]) -> None:
    kept = {inside(root, p) for pkg in keep for p in listed_paths(root, pkg)}
    directories = []
    for package in sorted(remove):
        for listed in listed_paths(root, package):
            path = inside(root, listed)
            if path is None or path in kept:
                continue
            if path.is_dir() and not path.is_symlink():
                directories.append(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        for info in info_files(root, package):
            info.unlink()
    for directory in sorted(set(directories), key=lambda p: len(p.parts), reverse=True):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    status = root / "var/lib/dpkg/status"
    stanzas = [s for s in parse_status(status.read_text()) if s["Package"] not in remove]
    status.write_text("\n".join(format_stanza(s) for s in stanzas))
    for link in dangling_links(root):  # alternatives (awk -> mawk, pager, ...) whose target went
        link.unlink()
    if "debconf" in remove:  # its answers database is no package's file
        shutil.rmtree(root / "var/cache/debconf", ignore_errors=True)


def dangling_links(root: Path) -> list[Path]:
    """Symbolic links under ``root`` whose target, read inside the rootfs, does not exist."""
    dangling = []
    for link in walk(root):
        if not link.is_symlink():
            continue
        path = link
        for _ in range(16):  # follow chains such as /usr/bin/awk -> /etc/alternatives/awk -> /usr/bin/mawk
            target = os.readlink(path)
            path = root / target.lstrip("/") if target.startswith("/") else path.parent / target
            resolved = inside(root, str(path.relative_to(root)) if path.is_relative_to(root) else "/nonexistent")
            if resolved is None or not resolved.is_symlink():
                break
            path = resolved
        if resolved is None or not (resolved.exists() or resolved.is_symlink()):
            dangling.append(link)
    return dangling


def remove_stdlib(root: Path) -> None:
    python = root / PYTHON
    if not python.is_dir():
        raise TrimError(f"{python} is missing: is this a python3.11 rootfs?")
    for pattern in STDLIB_UNUSED:
        for path in python.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        for cached in (python / "__pycache__").glob(pattern.split("/")[-1].removesuffix(".py") + ".*.pyc"):
            cached.unlink()


def compile_stdlib(root: Path) -> None:
    """Byte-compile the standard library with the rootfs's own interpreter (under qemu for a foreign arch).

    ``-b`` writes ``x.pyc`` beside ``x.py`` (the sourceless layout); with SOURCE_DATE_EPOCH set (build-runtime.sh
    sets it) the files are hash-based, so the output does not depend on file times.
    """
    interpreter = f"/usr/bin/{Path(PYTHON).name}"
    command = [
        shutil.which("chroot") or "/usr/sbin/chroot",
        str(root),
        interpreter,
        "-m",
        "compileall",
        "-q",
        "-b",
        "-j",
        "0",
        f"/{PYTHON}",
    ]
    env = {"PATH": "/usr/bin:/bin", "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "1700000000")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise TrimError(f"compiling the standard library failed ({' '.join(command)}): {done.stdout}{done.stderr}")


def sourceless(tree: Path) -> int:
    """Drop each regular ``x.py`` under ``tree`` that has an ``x.pyc`` beside it, and every ``__pycache__``.

    Python imports a lone ``x.pyc`` without looking for a source, so every module stays importable; tracebacks
    then name file and line but cannot print the line. Returns the bytes saved.
    """
    saved = 0
    for path in walk(tree, tree):
        if path.name == "__pycache__" and path.is_dir() and not path.is_symlink():
            saved += sum(p.stat().st_size for p in path.iterdir() if p.is_file())
            shutil.rmtree(path)
        elif path.suffix == ".py" and path.is_file() and not path.is_symlink() and path.with_suffix(".pyc").is_file():
            saved += path.stat().st_size
            path.unlink()
    return saved


def elf_needed(path: Path) -> list[str] | None:
    """DT_NEEDED entries of a 64-bit little-endian ELF file, or None when ``path`` is not one."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return None
        phoff, phentsize, phnum = struct.unpack_from("<Q", head, 32)[0], *struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    segments = [struct.unpack_from("<IIQQQQQQ", table, i * phentsize) for i in range(phnum)]
    dynamic = next((s for s in segments if s[0] == 2), None)  # PT_DYNAMIC
    if dynamic is None:
        return []
    data = path.read_bytes()
    entries = [struct.unpack_from("<qQ", data, dynamic[2] + i * 16) for i in range(dynamic[5] // 16)]
    strtab_vaddr = next((v for tag, v in entries if tag == 5), None)  # DT_STRTAB
    if strtab_vaddr is None:
        return []
    load = next(s for s in segments if s[0] == 1 and s[3] <= strtab_vaddr < s[3] + s[5])  # PT_LOAD holding it
    strtab = strtab_vaddr - load[3] + load[2]
    return [data[strtab + v : data.index(b"\0", strtab + v)].decode() for tag, v in entries if tag == 1]


def missing_libraries(root: Path) -> dict[str, list[str]]:
    """ELF files under ``root`` whose needed libraries are nowhere in the rootfs's library directories."""
    available: set[str] = set()
    for lib_dir in LIB_DIRS:
        base = root / lib_dir
        if base.is_dir() and not base.is_symlink():
            available |= {p.name for p in walk(root, base) if p.is_file() or p.is_symlink()}
    everything = walk(root)
    available |= {p.name for p in everything if ".so" in p.name and p.is_file()}  # wheels' own ($ORIGIN) libs
    problems = {}
    for path in everything:
        if path.is_symlink() or not path.is_file() or path.stat().st_size < 64:
            continue
        try:
            needed = elf_needed(path)
        except (OSError, struct.error, StopIteration, ValueError):
            needed = None
        lacking = [lib for lib in needed or [] if lib not in available]
        if lacking:
            problems[str(path.relative_to(root))] = lacking
    return problems


def size(root: Path) -> int:
    return sum(p.lstat().st_size for p in walk(root) if p.is_file() and not p.is_symlink())


def trim(
    root: Path, keep: tuple[str, ...] = KEEP, drop: tuple[str, ...] = DROP, compile_bytecode: bool = True
) -> tuple[int, int, list[str]]:
    """Trim ``root`` in place; returns (bytes before, bytes after, packages removed)."""
    root = Path(os.path.realpath(root))
    before = size(root)
    status = root / "var/lib/dpkg/status"
    if not status.is_file():
        raise TrimError(f"{status} is missing: pass the root of a Debian filesystem.")
    stanzas = parse_status(status.read_text())
    needed = closure(stanzas, keep, drop)
    removed = sorted({s["Package"] for s in stanzas} - needed)
    remove_packages(root, set(removed), needed)
    remove_stdlib(root)
    if compile_bytecode:
        compile_stdlib(root)
        sourceless(root / PYTHON)
    problems = missing_libraries(root)
    if problems:
        listing = "; ".join(f"{path} needs {', '.join(libs)}" for path, libs in sorted(problems.items()))
        raise TrimError(f"trimming left shared libraries missing: {listing}. Keep their packages (--keep).")
    return before, size(root), removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rootfs", type=Path)
    parser.add_argument("--keep", default=",".join(KEEP), help="packages whose dependency closure stays")
    parser.add_argument("--drop", default=",".join(DROP), help="packages removed even inside that closure")
    args = parser.parse_args(argv)
    try:
        before, after, removed = trim(args.rootfs, tuple(args.keep.split(",")), tuple(args.drop.split(",")))
    except TrimError as exc:
        print(f"trim-rootfs: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"trim-rootfs: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB; removed {len(removed)} packages: "
        + " ".join(removed),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
