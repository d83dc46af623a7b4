#!/usr/bin/env bash
# Install the Debian packages otaml's real tiers and demo use: containerd + runc (device runtime),
# docker-registry (a real OCI registry), buildah/skopeo/umoci/mmdebstrap (daemonless images),
# arch-test + qemu-user-static + binfmt-support (arm64 emulation), postgresql (MLflow server backend),
# wrk (load), python3-venv + python3-pip (`make setup` and images/build-runtime.sh on Debian's own python3),
# git (the image version label), make (.ci/run calls `make test`), mosquitto + mosquitto-clients (the fleet's
# MQTT broker and its mosquitto_passwd, for otaml.localstack.LocalBroker).
# Packages are installed with --no-install-recommends, so every Recommends a tool needs is listed by name
# (mmdebstrap refuses foreign architectures without arch-test). tests/scripts/test_host_deps.py checks that
# every package a script or module of the repository needs is here.
# Needs root on Debian/Ubuntu; elsewhere it says what is missing and exits non-zero.
set -euo pipefail

packages=(containerd runc docker-registry buildah skopeo umoci mmdebstrap arch-test
          qemu-user-static binfmt-support postgresql wrk ca-certificates iproute2 iptables
          python3 python3-venv python3-pip git make mosquitto mosquitto-clients)

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "host-deps: need root on Debian/Ubuntu to install: ${packages[*]}" >&2
    exit 1
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "host-deps: all Debian packages present"
    exit 0
fi
echo "host-deps: installing with apt-get: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "host-deps: done"
