#!/usr/bin/env bash
# Installs every Debian 12 package nbdmgr needs to build, test and benchmark.
# Idempotent: installs only what is missing. Needs root (or sudo) and Debian's mirror.
set -euo pipefail

PKGS=(
  # toolchain
  g++ make cmake ninja-build ccache pkg-config git ca-certificates
  # libraries
  libboost1.81-dev libabsl-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev
  protobuf-compiler libgtest-dev libgmock-dev libspdlog-dev liburing-dev prometheus-cpp-dev
  libssl-dev libsystemd-dev libcli11-dev
  # interop peers and benchmark tools
  libnbd-bin python3 python3-libnbd qemu-utils nbdkit fio procps curl file
  python3-grpcio python3-protobuf openssl prometheus gnutls-bin
  # sanitizer and fuzzing builds
  clang-14 libclang-rt-14-dev
  # packaging (CPack DEB, man pages) and deploy checks
  dpkg-dev help2man python3-yaml systemd
  # Ceph RBD backend and its throwaway test cluster (tests/interop/ceph_cluster.py);
  # ceph-common brings the ceph/rbd CLIs and python3-rados/python3-rbd
  ceph-mon ceph-osd ceph-common librbd-dev
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
