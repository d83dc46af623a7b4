#!/usr/bin/env bash
# Build the otaml base runtime image (no model) for linux/amd64 and linux/arm64 without a Docker daemon.
#
#   images/build-runtime.sh [--platforms linux/amd64,linux/arm64] [--push HOST:PORT/REPO:TAG]
#                           [--cache-dir DIR] [--refresh] [--tls-verify] [--preflight]
#
# 0. A preflight checks every tool and package the build needs (and arm64 emulation) before the cache is
#    consulted, so a warm cache cannot hide a missing package; --preflight stops after it.
# 1. Debian bookworm root filesystems from mmdebstrap (cached as OCI archives keyed by arch + package list):
#    a runtime base per target arch (python3 3.11 and the shared libraries the wheels need) and one
#    builder base for the build machine (python3-pip).
# 2. Each tarball becomes a one-layer OCI image (buildah from scratch / add / commit).
# 3. `buildah bud -f Dockerfile.runtime` once per platform: the builder stage runs natively and installs
#    the target arch's wheels with `pip --platform`, so nothing is emulated at image build time. The wheels
#    are fetched by this machine's pip (its index/proxy/CA settings) into a cached wheelhouse mounted
#    at /wheels; the build itself needs no network.
# 4. The per-platform images go into one index, saved as an OCI layout under the cache (keyed by the
#    Dockerfile, edge_runtime/, pyproject.toml, constraints.txt and the bases) and pushed if asked.
#
# The last line on stdout is `OCI_LAYOUT=<dir>:<tag>`; progress goes to stderr.
# Needs root and the Debian packages of scripts/host-deps.sh (mmdebstrap, buildah, skopeo, python3-pip; for arm64 on
# x86 arch-test, qemu-user-static and binfmt-support).
set -euo pipefail

SCRIPT_VERSION=3 # bump to invalidate every cached tarball and image
SUITE=bookworm
MIRROR=${OTAML_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${OTAML_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
PLATFORMS=linux/amd64,linux/arm64
PUSH=""
CACHE_DIR=${OTAML_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/otaml}
REFRESH=0
TLS_VERIFY=false
PREFLIGHT_ONLY=0
ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

# Runtime base: the Essential set + python3.11 (interpreter + stdlib) + the C++ runtime onnxruntime links
# against. numpy/onnxruntime/cryptography wheels bundle everything else (checked with ldd). No ca-certificates:
# it drags in perl and openssl, and the scoring service makes no TLS connections.
RUNTIME_PACKAGES=python3-minimal,libpython3.11-stdlib,libstdc++6
# The target's binutils strip the unstripped shared libraries some wheels ship (either architecture).
BUILDER_PACKAGES=python3,python3-pip,binutils-aarch64-linux-gnu,binutils-x86-64-linux-gnu
# glibc's iconv modules (20 MB) serve iconv(3), which neither CPython nor the wheels call. images/trim-rootfs.py
# then removes every package outside python3's dependency closure (perl, coreutils, util-linux, PAM, ...) and
# the standard-library modules a service never imports, and checks that no shared library went missing. It
# runs natively on this machine's python3 for either target architecture; its content is part of the cache key.
TRIM_SCRIPT=$ROOT_DIR/images/trim-rootfs.py
RUNTIME_TRIM='rm -rf "$1"/usr/lib/*-linux-gnu/gconv && python3 "$OTAML_TRIM_SCRIPT" "$1"'
export OTAML_TRIM_SCRIPT=$TRIM_SCRIPT
# Merged /usr set up by mmdebstrap's hook instead of the usrmerge package (which drags in 50 MB of perl).
# Docs, man pages and translations never help a container.
DPKG_OPTS=(
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
)

log() { printf '[build-runtime %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --platforms) PLATFORMS=$2; shift 2 ;;
    --push) PUSH=$2; shift 2 ;;
    --cache-dir) CACHE_DIR=$2; shift 2 ;;
    --refresh) REFRESH=1; shift ;;
    --tls-verify) TLS_VERIFY=true; shift ;;
    --preflight) PREFLIGHT_ONLY=1; shift ;;
    -h|--help) usage ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

HOST_ARCH=$(dpkg --print-architecture)
IFS=, read -r -a PLATFORM_LIST <<<"$PLATFORMS"

deb_arch() {
  case "$1" in
    linux/amd64) echo amd64 ;;
    linux/arm64|linux/arm64/v8) echo arm64 ;;
    *) die "unsupported platform '$1': use linux/amd64 and/or linux/arm64" ;;
  esac
}

# pip on the build machine (it has this machine's proxy/CA/index settings; the build container does not).
pip_python() {
  if [[ -x $ROOT_DIR/.venv/bin/python ]]; then echo "$ROOT_DIR/.venv/bin/python"; else echo python3; fi
}

ensure_emulation() { # $1 = Debian arch
  local arch=$1
  [[ $arch == "$HOST_ARCH" ]] && return 0
  local qemu_name=qemu-aarch64
  [[ $arch == amd64 ]] && qemu_name=qemu-x86_64
  if [[ ! -e /proc/sys/fs/binfmt_misc/status ]]; then
    log "mounting binfmt_misc (mmdebstrap runs $arch maintainer scripts under qemu)"
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc: run as root on a host kernel with binfmt_misc"
  fi
  if [[ ! -e /proc/sys/fs/binfmt_misc/$qemu_name ]]; then
    command -v update-binfmts >/dev/null || die "no $qemu_name binfmt handler: apt-get install -y qemu-user-static binfmt-support"
    update-binfmts --enable "$qemu_name" || die "update-binfmts --enable $qemu_name failed: apt-get install -y qemu-user-static binfmt-support"
  fi
}

# Everything a build needs, checked before the cache is looked at: a warm cache skips mmdebstrap, and must not
# hide a tool a fresh machine lacks. Each missing piece is named with the Debian package that provides it
# (scripts/host-deps.sh installs them all; tests/scripts/test_host_deps.py keeps the two lists in step).
PREFLIGHT_MISSING=()
need_cmd() { # $1 = command, $2 = Debian package
  command -v "$1" >/dev/null || PREFLIGHT_MISSING+=("$2 (for '$1')")
}
preflight() {
  [[ $(id -u) -eq 0 ]] || die "run as root: mmdebstrap and buildah's vfs storage need it here (sudo $0)"
  need_cmd mmdebstrap mmdebstrap
  need_cmd buildah buildah
  need_cmd skopeo skopeo
  need_cmd sha256sum coreutils
  need_cmd flock util-linux
  need_cmd dpkg dpkg
  need_cmd python3 python3
  # The trim hook runs on the host's python3 against the image's 3.11 standard library.
  if command -v python3 >/dev/null && ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PREFLIGHT_MISSING+=("python3 >= 3.11 on this machine (Debian bookworm's python3; found $(python3 -V 2>&1))")
  fi
  if command -v mmdebstrap >/dev/null && [[ ! -d /usr/share/mmdebstrap/hooks/merged-usr ]]; then
    PREFLIGHT_MISSING+=("mmdebstrap >= 1.0 (for its merged-usr hook)")
  fi
  local py
  py=$(pip_python)
  if command -v "$py" >/dev/null && ! "$py" -c 'import tomllib, pip' 2>/dev/null; then
    PREFLIGHT_MISSING+=("python3-pip (for '$py -m pip download'; Python >= 3.11 for tomllib)")
  fi
  local foreign=()
  for platform in "${PLATFORM_LIST[@]}"; do
    arch=$(deb_arch "$platform")
    [[ $arch == "$HOST_ARCH" ]] || foreign+=("$arch")
  done
  if [[ ${#foreign[@]} -gt 0 ]]; then
    # mmdebstrap refuses a foreign architecture without arch-test (a Recommends that --no-install-recommends drops).
    need_cmd arch-test arch-test
    need_cmd update-binfmts binfmt-support
    for arch in "${foreign[@]}"; do
      case "$arch" in
        arm64) need_cmd qemu-aarch64-static qemu-user-static ;;
        amd64) need_cmd qemu-x86_64-static qemu-user-static ;;
      esac
    done
  fi
  if [[ ${#PREFLIGHT_MISSING[@]} -gt 0 ]]; then
    local pkgs=()
    for item in "${PREFLIGHT_MISSING[@]}"; do pkgs+=("${item%% *}"); done
    log "error: missing on this machine:"
    for item in "${PREFLIGHT_MISSING[@]}"; do log "  - $item"; done
    die "install them: apt-get install -y --no-install-recommends ${pkgs[*]} (or run scripts/host-deps.sh, which installs all of them)"
  fi
  for arch in "${foreign[@]}"; do
    ensure_emulation "$arch"
    # What mmdebstrap itself checks: can this kernel run $arch binaries right now?
    arch-test "$arch" >/dev/null 2>&1 \
      || die "this machine cannot run $arch binaries (arch-test $arch fails): enable binfmt with 'update-binfmts --enable qemu-aarch64' (packages qemu-user-static binfmt-support)"
  done
  log "preflight: root, mmdebstrap, buildah, skopeo, pip${foreign[*]:+, emulation for ${foreign[*]}} ok"
}
preflight
[[ $PREFLIGHT_ONLY -eq 0 ]] || exit 0
mkdir -p "$CACHE_DIR/rootfs" "$CACHE_DIR/images" "$CACHE_DIR/tmp"
# One build per cache at a time: concurrent runs would share partial files and the buildah store.
exec 9>"$CACHE_DIR/lock"
if ! flock --nonblock 9; then
  log "another build holds $CACHE_DIR/lock; waiting for it"
  flock 9
fi
BUILDAH=(buildah --root "$CACHE_DIR/storage" --runroot "$CACHE_DIR/run" --storage-driver vfs)

key_of() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }

# Print "<name>-<arch>-<key>" and make sure "$CACHE_DIR/rootfs/<that>.oci.tar" exists: a Debian root
# filesystem from mmdebstrap ($2 packages, $4 trimming hook) as a one-layer OCI archive. Only the archive
# is kept (the intermediate tarball is deleted), keyed by everything that shapes it.
base_archive() {
  local arch=$1 packages=$2 name=$3 trim=${4:-true}
  local key stem archive tar
  local parts=("$SCRIPT_VERSION" "$SUITE" "$MIRROR" "$SECURITY_MIRROR" "$arch" "$packages" "${DPKG_OPTS[*]}" "$trim"
    "$(mmdebstrap --version)")
  [[ $trim != *OTAML_TRIM_SCRIPT* ]] || parts+=("$(sha256sum <"$TRIM_SCRIPT")")
  key=$(key_of "${parts[@]}")
  stem="$name-$arch-$key"
  archive="$CACHE_DIR/rootfs/$stem.oci.tar"
  tar="$CACHE_DIR/tmp/$stem.tar"
  if [[ -s $archive && $REFRESH -eq 0 ]]; then
    log "base $name/$arch: cached $(du -h "$archive" | cut -f1) $archive"
    touch "$archive"
  else
    ensure_emulation "$arch"
    rm -rf "$tar"
    log "base $name/$arch: mmdebstrap $SUITE ($packages), a few minutes on a fresh machine"
    local t0=$SECONDS
    mmdebstrap --quiet --mode=root --format=tar --variant=essential --arch="$arch" --include="$packages" \
      "${DPKG_OPTS[@]}" \
      --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/* "$1"/var/cache/ldconfig/aux-cache' \
      --customize-hook="$trim" \
      "$SUITE" "$tar" "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
      "deb $SECURITY_MIRROR $SUITE-security main" >&2 \
      || die "mmdebstrap $name/$arch failed (see above: network to $MIRROR? binfmt for $arch? a customize hook?)"
    log "base $name/$arch: rootfs $(du -h "$tar" | cut -f1) in $((SECONDS - t0)) s; committing it as an image"
    local ctr
    ctr=$("${BUILDAH[@]}" from --arch "$arch" --os linux scratch)
    "${BUILDAH[@]}" add "$ctr" "$tar" / >/dev/null
    "${BUILDAH[@]}" config --arch "$arch" --os linux --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --cmd /bin/sh "$ctr"
    rm -f "$archive.partial"
    "${BUILDAH[@]}" commit --quiet --timestamp "$SOURCE_DATE_EPOCH" "$ctr" "oci-archive:$archive.partial" >/dev/null
    "${BUILDAH[@]}" rm "$ctr" >/dev/null
    mv "$archive.partial" "$archive"
    rm -f "$tar"
  fi
  rm -f "$CACHE_DIR/rootfs/$stem.tar" # left by older versions of this script
  printf '%s\n' "$stem"
}

# Print a directory holding the target arch's wheels of the serve extra (cached by requirement list).
wheelhouse() {
  local wheel_arch=$1 py reqs key dir
  py=$(pip_python)
  reqs=$("$py" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["serve"]))' \
    "$ROOT_DIR/pyproject.toml") || die "cannot read the serve extra from pyproject.toml with $py (needs Python >= 3.11)"
  key=$(key_of "$SCRIPT_VERSION" "$reqs" "$(sha256sum <"$ROOT_DIR/constraints.txt")" "$wheel_arch")
  dir="$CACHE_DIR/wheels/$wheel_arch-$key"
  if [[ -f $dir/.complete && $REFRESH -eq 0 ]]; then
    log "wheels $wheel_arch: cached $(find "$dir" -name '*.whl' | wc -l) wheels $dir"
    touch "$dir"
  else
    log "wheels $wheel_arch: pip download (cp311, manylinux2014/manylinux_2_28)"
    rm -rf "$dir"
    mkdir -p "$dir"
    printf '%s\n' "$reqs" >"$dir/requirements.txt"
    "$py" -m pip download --quiet --only-binary=:all: \
      --platform "manylinux2014_$wheel_arch" --platform "manylinux_2_28_$wheel_arch" \
      --python-version 3.11 --implementation cp \
      --constraint "$ROOT_DIR/constraints.txt" --requirement "$dir/requirements.txt" --dest "$dir" >&2 \
      || die "pip download for $wheel_arch failed (PyPI reachable? constraints.txt pins with $wheel_arch wheels?)"
    touch "$dir/.complete"
  fi
  printf '%s\n' "$dir"
}

context_key() {
  (
    cd "$ROOT_DIR"
    sha256sum Dockerfile.runtime pyproject.toml constraints.txt
    find edge_runtime -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
  ) | sha256sum | cut -c1-16
}

T_START=$SECONDS
log "platforms $PLATFORMS, cache $CACHE_DIR"
builder_stem=$(base_archive "$HOST_ARCH" "$BUILDER_PACKAGES" builder)
builder_image="oci-archive:$CACHE_DIR/rootfs/$builder_stem.oci.tar"

declare -A RUNTIME_BASE
base_keys=()
for platform in "${PLATFORM_LIST[@]}"; do
  arch=$(deb_arch "$platform")
  stem=$(base_archive "$arch" "$RUNTIME_PACKAGES" runtime "$RUNTIME_TRIM")
  RUNTIME_BASE[$platform]="oci-archive:$CACHE_DIR/rootfs/$stem.oci.tar"
  base_keys+=("$stem.tar")
done

image_key=$(key_of "$SCRIPT_VERSION" "$(context_key)" "$builder_stem.tar" "${base_keys[@]}" "$PLATFORMS")
layout="$CACHE_DIR/images/runtime-$image_key"
tag=base
if [[ -f $layout/index.json && $REFRESH -eq 0 ]]; then
  log "runtime image: cached $layout:$tag (key $image_key)"
  touch "$layout"
else
  manifest_list="otaml-runtime-$image_key"
  "${BUILDAH[@]}" manifest rm "$manifest_list" >/dev/null 2>&1 || true
  "${BUILDAH[@]}" manifest create "$manifest_list" >/dev/null
  for platform in "${PLATFORM_LIST[@]}"; do
    arch=$(deb_arch "$platform")
    log "buildah bud Dockerfile.runtime for $platform (builder runs natively on $HOST_ARCH)"
    t0=$SECONDS
    image_id_file="$CACHE_DIR/tmp/iid-$arch"
    wheels=$(wheelhouse "$([[ $arch == arm64 ]] && echo aarch64 || echo x86_64)")
    # --isolation chroot: no Docker/runc-in-container needed. pip installs offline from the wheelhouse.
    "${BUILDAH[@]}" bud --quiet --isolation chroot --layers=false \
      --volume "$wheels:/wheels:ro" --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels \
      --platform "$platform" --timestamp "$SOURCE_DATE_EPOCH" \
      --build-arg "BUILDER_IMAGE=$builder_image" \
      --build-arg "BASE_IMAGE=${RUNTIME_BASE[$platform]}" \
      --build-arg "VERSION=$(cd "$ROOT_DIR" && git describe --always --dirty 2>/dev/null || echo dev)" \
      --iidfile "$image_id_file" \
      -f "$ROOT_DIR/Dockerfile.runtime" "$ROOT_DIR" >&2 \
      || die "buildah bud for $platform failed (see the output above)"
    "${BUILDAH[@]}" manifest add --os linux --arch "$arch" "$manifest_list" "$(cat "$image_id_file")" >/dev/null
    log "built $platform in $((SECONDS - t0)) s"
  done
  rm -rf "$layout.partial"
  log "saving index to $layout:$tag"
  "${BUILDAH[@]}" manifest push --quiet --all --format oci "$manifest_list" "oci:$layout.partial:$tag" >&2
  rm -rf "$layout"
  mv "$layout.partial" "$layout"
  "${BUILDAH[@]}" manifest rm "$manifest_list" >/dev/null 2>&1 || true
  # The vfs store holds a full copy per layer; the layout above is what we keep.
  "${BUILDAH[@]}" rmi --all --force >/dev/null 2>&1 || true
fi

if [[ -n $PUSH ]]; then
  dest=${PUSH#docker://}
  log "pushing the index to $dest"
  skopeo copy --quiet --all --dest-tls-verify="$TLS_VERIFY" "oci:$layout:$tag" "docker://$dest" >&2 \
    || die "pushing to $dest failed: is the registry up? (plain HTTP needs the default --tls-verify off)"
fi
# Entries unused for a week belong to old package lists, Dockerfiles or pins: drop them.
find "$CACHE_DIR/rootfs" "$CACHE_DIR/images" "$CACHE_DIR/wheels" -mindepth 1 -maxdepth 1 -mtime +7 -exec rm -rf {} + 2>/dev/null || true
log "done in $((SECONDS - T_START)) s"
echo "OCI_LAYOUT=$layout:$tag"
