#!/usr/bin/env bash
# Installs what xdpsec needs on a fresh Debian 12 machine, and nothing twice.
#  - Debian packages: bcc (python3-bpfcc: there is no real bcc on PyPI), kernel headers for bcc,
#    iproute2/ping/tcpdump/iperf3/tshark for the lab, strongSwan for the interop tests (its daemon is never started
#    as a service: the tests run their own charon per namespace).
#  - /lib/modules/$(uname -r)/{build,source} -> Debian's linux-headers (6.1): the running kernel ships none,
#    and bcc needs both trees (see shared notes).
#  - .venv from Debian's python3 (the one python3-bpfcc is built for), with bcc reached through a symlink
#    so that Debian's old `cryptography` never shadows the one from PyPI.
# Safe to run twice; prints one line per step it actually performs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root (XDP and namespaces need it)" >&2; exit 1; }

APT_PKGS=(python3-bpfcc bpfcc-tools libbpfcc linux-headers-amd64 python3-venv iproute2 iputils-ping
          tcpdump ethtool iperf3 kmod nftables procps
          # tshark decrypts lab captures with the keys xdpsec exports (tests/netns/test_keyexport.py)
          tshark
          # the third-party IKE peer for interop tests and benchmarks (userspace ESP: kernel-libipsec)
          strongswan-charon strongswan-swanctl strongswan-pki libcharon-extra-plugins
          libstrongswan-extra-plugins libstrongswan-standard-plugins)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

kdir=/lib/modules/$(uname -r)
if [ ! -e "$kdir/build/Makefile" ] || [ ! -e "$kdir/source/include/linux/kconfig.h" ]; then
  amd64=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common | sort -V | tail -n1)
  echo "setup: kernel headers for bcc: $kdir/build -> $amd64, $kdir/source -> $common"
  mkdir -p "$kdir"
  ln -sfn "$amd64" "$kdir/build"
  ln -sfn "$common" "$kdir/source"
fi

# git keeps no file modes, and the config loader refuses private keys others can read
chmod 600 config/certs/*.key 2>/dev/null || true

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  /usr/bin/python3 -m venv .venv
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -e "$site/bcc" ] || ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
stamp=.venv/.xdpsec-deps
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: pip install -e .[test,bench]"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,bench]'
  touch "$stamp"
fi
