"""images/trim-rootfs.py on a small fake Debian root: closure, removal (files and dpkg records), links, ELF check."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("trim_rootfs", ROOT / "images" / "trim-rootfs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


trim_rootfs = load_script()

STATUS = """\
Package: python3-minimal
Status: install ok installed
Pre-Depends: dpkg (>= 1.17)
Depends: libpython-x (= 1), libz | libz-compat
Description: the interpreter
 with a continuation line

Package: libpython-x
Status: install ok installed
Depends: libc6

Package: libz
Status: install ok installed

Package: libc6
Status: install ok installed

Package: dpkg
Status: install ok installed
Depends: tar

Package: tar
Status: install ok installed

Package: perl-base
Status: install ok installed
Essential: yes

Package: mawk
Status: install ok installed
"""

FILES = {
    "python3-minimal": ["/usr/", "/usr/bin/", "/usr/bin/python3"],
    "libpython-x": ["/usr/lib/", "/usr/lib/python3.11/", "/usr/lib/python3.11/os.py"],
    "libz": ["/usr/lib/libz.so.1"],
    "libc6": ["/usr/lib/libc.so.6", "/usr/share/doc/libc6/copyright"],
    "dpkg": ["/usr/bin/dpkg", "/usr/share/doc/libc6/copyright"],
    "tar": ["/usr/bin/tar"],
    "perl-base": ["/usr/bin/perl", "/usr/lib/perl5/", "/usr/lib/perl5/strict.pm"],
    "mawk": ["/usr/bin/mawk"],
}


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(STATUS)
    for package, paths in FILES.items():
        (info / f"{package}.list").write_text("/.\n" + "\n".join(p.rstrip("/") for p in paths) + "\n")
        (info / f"{package}.md5sums").write_text("")
        for path in paths:
            target = root / path.strip("/")
            if path.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(package)
    (root / "bin").symlink_to("usr/bin")  # merged /usr, as mmdebstrap's hook makes it
    (root / "etc/alternatives").mkdir(parents=True)
    (root / "etc/alternatives/awk").symlink_to("/usr/bin/mawk")
    (root / "usr/bin/awk").symlink_to("/etc/alternatives/awk")
    (root / "usr/bin/python3.11").symlink_to("python3")
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")  # no package owns it
    return root


def test_closure_follows_depends_pre_depends_and_the_first_installed_alternative(rootfs: Path) -> None:
    stanzas = trim_rootfs.parse_status((rootfs / "var/lib/dpkg/status").read_text())
    assert stanzas[0]["Description"] == "the interpreter\n with a continuation line"
    assert trim_rootfs.closure(stanzas, ("python3-minimal",)) == {
        "python3-minimal",
        "libpython-x",
        "libz",
        "libc6",
        "dpkg",
        "tar",
    }
    # A dropped package takes the dependencies only it needed along (tar comes in through dpkg alone).
    assert trim_rootfs.closure(stanzas, ("python3-minimal",), drop=("dpkg",)) == {
        "python3-minimal",
        "libpython-x",
        "libz",
        "libc6",
    }
    with pytest.raises(trim_rootfs.TrimError, match="no-such-package"):
        trim_rootfs.closure(stanzas, ("no-such-package",))


def test_packages_outside_the_closure_and_dropped_ones_leave_files_and_records(rootfs: Path) -> None:
    (rootfs / PYTHON_STDLIB / "lib-dynload").mkdir(parents=True)
    (rootfs / PYTHON_STDLIB / "pydoc_data").mkdir()
    (rootfs / PYTHON_STDLIB / "pydoc_data/topics.py").write_text("")
    (rootfs / PYTHON_STDLIB / "lib-dynload/_sqlite3.cpython-311-x86_64-linux-gnu.so").write_text("")
    before, after, removed = trim_rootfs.trim(
        rootfs, keep=("python3-minimal",), drop=("dpkg", "tar"), compile_bytecode=False
    )
    assert removed == ["dpkg", "mawk", "perl-base", "tar"]
    assert after < before
    present = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*") if not p.is_dir() or p.is_symlink())
    assert present == [
        "bin",
        "etc/passwd",
        "usr/bin/python3",
        "usr/bin/python3.11",
        "usr/lib/libc.so.6",
        "usr/lib/libz.so.1",
        "usr/lib/python3.11/os.py",
        "usr/share/doc/libc6/copyright",  # listed by a removed package too, but a kept one owns it
        "var/lib/dpkg/info/libc6.list",
        "var/lib/dpkg/info/libc6.md5sums",
        "var/lib/dpkg/info/libpython-x.list",
        "var/lib/dpkg/info/libpython-x.md5sums",
        "var/lib/dpkg/info/libz.list",
        "var/lib/dpkg/info/libz.md5sums",
        "var/lib/dpkg/info/python3-minimal.list",
        "var/lib/dpkg/info/python3-minimal.md5sums",
        "var/lib/dpkg/status",
    ]
    assert not (rootfs / "usr/lib/perl5").exists()  # emptied directories go too
    status = trim_rootfs.parse_status((rootfs / "var/lib/dpkg/status").read_text())
    assert [s["Package"] for s in status] == ["python3-minimal", "libpython-x", "libz", "libc6"]
    assert status[0]["Description"] == "the interpreter\n with a continuation line"


PYTHON_STDLIB = "usr/lib/python3.11"


def elf_with_needs(libraries: list[str]) -> bytes:
    """A minimal 64-bit little-endian ELF with one PT_LOAD, one PT_DYNAMIC and DT_NEEDED entries."""
    import struct

    strtab = b"\0" + b"".join(name.encode() + b"\0" for name in libraries)
    offsets = []
    position = 1
    for name in libraries:
        offsets.append(position)
        position += len(name) + 1
    header_size, ph_size = 64, 56
    dynamic_offset = header_size + 2 * ph_size
    dynamic = b"".join(struct.pack("<qQ", 1, off) for off in offsets)
    strtab_offset = dynamic_offset + len(dynamic) + 2 * 16
    dynamic += struct.pack("<qQ", 5, 0x1000 + strtab_offset) + struct.pack("<qQ", 0, 0)
    total = strtab_offset + len(strtab)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, header_size, 0, 0, header_size, ph_size, 2, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, 0, 0x1000, 0x1000, total, total, 0x1000)
    dyn = struct.pack("<IIQQQQQQ", 2, 6, dynamic_offset, 0x1000 + dynamic_offset, 0, len(dynamic), len(dynamic), 8)
    return header + load + dyn + dynamic + strtab


def test_elf_needed_reads_dt_needed(tmp_path: Path) -> None:
    path = tmp_path / "prog"
    path.write_bytes(elf_with_needs(["libc.so.6", "libssl.so.3"]))
    assert trim_rootfs.elf_needed(path) == ["libc.so.6", "libssl.so.3"]
    (tmp_path / "text").write_text("#!/bin/sh\n" * 20)
    assert trim_rootfs.elf_needed(tmp_path / "text") is None
    assert "libc.so.6" in (trim_rootfs.elf_needed(Path(sys.executable).resolve()) or ["libc.so.6"])


def test_a_library_removed_from_under_a_binary_fails_the_trim_and_is_named(rootfs: Path) -> None:
    (rootfs / "usr/bin/python3").write_bytes(elf_with_needs(["libc.so.6", "libperl.so.5.36"]))
    (rootfs / "var/lib/dpkg/info/perl-base.list").write_text("/usr/lib/libperl.so.5.36\n")
    (rootfs / "usr/lib/libperl.so.5.36").write_text("")
    (rootfs / PYTHON_STDLIB).mkdir(parents=True, exist_ok=True)
    with pytest.raises(trim_rootfs.TrimError, match=r"usr/bin/python3 needs libperl\.so\.5\.36"):
        trim_rootfs.trim(rootfs, keep=("python3-minimal",), drop=(), compile_bytecode=False)


def test_the_real_build_keeps_what_the_runtime_links() -> None:
    """The keep list names python3 and the C++ runtime; the drop list never drops them or libc."""
    assert {"python3-minimal", "libpython3.11-stdlib", "libstdc++6"} <= set(trim_rootfs.KEEP)
    assert not {"libc6", "libssl3", "libexpat1", "zlib1g", "libffi8"} & set(trim_rootfs.DROP)
    assert shutil.which("python3") is not None  # build-runtime.sh runs the script with the host's python3
