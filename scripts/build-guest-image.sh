#!/usr/bin/env bash
# Build the tiny test guest once into ${STRATO_IMAGE_DIR:-$HOME/.cache/strato/images}/tiny.qcow2.
# Skips when it is already there (pass --force to rebuild). Needs the Debian packages listed in
# docs/tiny-image.md (busybox-static, syslinux, mtools, dosfstools, cpio, kmod, qemu-utils); the kernel
# comes from the linux-image package file, downloaded and unpacked under ~/.cache/strato/kernel.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
image_dir=${STRATO_IMAGE_DIR:-$HOME/.cache/strato/images}
image=$image_dir/tiny.qcow2

# Rebuilt when the guest's sources changed since (new guest commands must reach CI's cached image).
if [[ -f $image && ${1:-} != --force ]] && ! find "$here/src/strato/image" -type f -newer "$image" | grep -q .; then
    echo "tiny guest image present: $image"
    exit 0
fi

strato=$here/.venv/bin/strato
[[ -x $strato ]] || strato=strato
mkdir -p "$image_dir"
"$strato" image build-tiny "$image"
