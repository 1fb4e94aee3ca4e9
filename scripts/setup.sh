#!/usr/bin/env bash
# Sets up everything Strato needs on a fresh Debian machine: system packages (apt), a virtual
# environment with Strato and its test tools, and the tiny guest image. Safe to run again.
# It changes nothing on the host but its list of installed packages and caches under ~/.cache: the
# guest kernel is not installed (that would add it to the host's /boot and boot loader), its Debian
# package is downloaded into ~/.cache/strato/kernel/debs and unpacked there with dpkg-deb -x.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

packages=(
  qemu-system-x86 qemu-utils            # the hypervisor and qemu-img
  postgresql                            # tests also run against PostgreSQL
  busybox-static kmod cpio              # the tiny guest's user space and initramfs
  syslinux syslinux-common mtools dosfstools   # its boot loader on a FAT disk, without mounting
  xorriso genisoimage                   # config drives (ISO 9660)
  nftables iproute2                     # link-fault tests: network namespaces, a cut between two hosts
  dnsmasq-base                          # guest networks: DHCP in each virtual router (binary only, no service)
  chromium                              # the web UI's browser tests (Playwright drives it)
  python3-venv
)

missing=()
for p in "${packages[@]}"; do
  [[ $p == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  echo "Installing system packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The guest kernel: the package linux-image-amd64 depends on, as a .deb (apt-get download, no install).
if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
  echo "Updating apt's package lists (to find the guest kernel package)"
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'

.venv/bin/python -m strato.image.kernel   # download + unpack into ~/.cache/strato/kernel (once)

bash scripts/build-guest-image.sh
