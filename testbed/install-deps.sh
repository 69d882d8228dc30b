#!/usr/bin/env bash
# Installs the host packages the testbed needs on Debian 12 (run as root).
# QEMU comes from bookworm-backports: Debian 12's QEMU 7.2 segfaults when a TCG guest's
# virtio-net starts on a vhost-user port. The backports suite is added with the Debian
# mirror URI already configured on this machine (never a hard-coded host).
set -euo pipefail

PACKAGES=(
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-dev pkg-config
  debootstrap busybox-static cpio xz-utils zstd lz4 e2fsprogs
  iperf3 sockperf openssh-client iproute2 ethtool
  dpdk-dev gcc libc6-dev
  python3-venv python3-dev
)
BACKPORTS_PACKAGES=(qemu-system-x86 qemu-utils)

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: must run as root (apt-get install)" >&2; exit 1
fi

have_all() {
  local p
  for p in "${PACKAGES[@]}" "${BACKPORTS_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || return 1
  done
  # QEMU must be the backports build (>= 8), not bookworm's 7.2.
  local v
  v=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || echo 0)
  dpkg --compare-versions "$v" ge 1:8 || return 1
  getent passwd libvirt-qemu >/dev/null || return 1
}

# libvirt's QEMU driver looks up its default user and group when it initialises, even in
# embedded mode where qemu.conf then says root. libvirt-daemon-system would create them but
# also brings daemons, polkit and firewall rules we do not want: create just the accounts.
ensure_qemu_accounts() {
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  getent group kvm >/dev/null || groupadd --system kvm
  getent passwd libvirt-qemu >/dev/null || useradd --system --no-create-home --home-dir /var/lib/libvirt \
    --shell /usr/sbin/nologin -g libvirt-qemu -G kvm libvirt-qemu
}

if have_all; then
  exit 0
fi

# The Debian mirror URI this machine already uses for bookworm main.
debian_uri() {
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/{u=$2} /^Suites:/ && / bookworm( |$)/ {print u; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ]; then
    uri=$(grep -hE '^deb +(\[[^]]*\] +)?[a-z]+://[^ ]+ +bookworm +' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | head -1 | sed -E 's/^deb +(\[[^]]*\] +)?([^ ]+).*/\2/')
  fi
  [ -n "$uri" ] || { echo "install-deps: no bookworm source found in /etc/apt/sources.list*" >&2; exit 1; }
  echo "$uri"
}

BP=/etc/apt/sources.list.d/isostack-backports.list
if ! grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb $(debian_uri) bookworm-backports main" > "$BP"
  echo "install-deps: added bookworm-backports ($BP)"
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends -t bookworm-backports "${BACKPORTS_PACKAGES[@]}"
apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
ensure_qemu_accounts
have_all || { echo "install-deps: packages still missing after install" >&2; exit 1; }
echo "install-deps: done ($(qemu-system-x86_64 --version | head -1))"
