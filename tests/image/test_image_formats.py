"""Host-side pieces of the tiny image that need no QEMU: integrity format, config drive, module closure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strato.image.configdrive import config_drive_files
from strato.image.integrity import (
    BlockFailure,
    encode_block,
    encode_superblock,
    parse_generations,
    payload,
    verify_image,
)
from strato.image.kernel import GUEST_MODULES, ModuleIndex, find_kernel
from strato.image.tools import ImageToolError


def _disk(path: Path, gens: dict[int, int], bs: int = 4096) -> Path:
    with path.open("wb") as f:
        f.write(encode_superblock(bs, len(gens)))
        for n in sorted(gens):
            f.write(encode_block(n, gens[n], bs))
    return path


def test_payload_matches_guest_yes_head() -> None:
    assert payload(3, 7, 25) == b"strato 3 7\nstrato 3 7\nstr"


def test_verify_ok_and_lost_write(tmp_path: Path) -> None:
    disk = _disk(tmp_path / "d.raw", {1: 1, 2: 3, 3: 2})
    report = verify_image(disk)
    assert report.ok and report.generations == {1: 1, 2: 3, 3: 2}
    report = verify_image(disk, expected_generations={2: 4})
    assert report.failures == [BlockFailure(2, "lost-write gen 3 < 4")]


@pytest.mark.parametrize(
    ("offset", "reason"),
    [(2 * 4096 + 20, "checksum gen 1"), (2 * 4096 + 2000, "checksum gen 1"), (2 * 4096, "bad-header")],
)
def test_verify_detects_one_corrupt_byte(tmp_path: Path, offset: int, reason: str) -> None:
    disk = _disk(tmp_path / "d.raw", {1: 1, 2: 1, 3: 1})
    with disk.open("r+b") as f:
        f.seek(offset)
        f.write(b"X")
    assert verify_image(disk).failures == [BlockFailure(2, reason)]


def test_verify_without_superblock(tmp_path: Path) -> None:
    disk = tmp_path / "empty.raw"
    disk.write_bytes(bytes(65536))
    assert verify_image(disk).failures == [BlockFailure(0, "superblock")]


def test_parse_generations() -> None:
    assert parse_generations("STRATO-INTEGRITY-GENS 1:2 2:3") == {1: 2, 2: 3}


def test_config_drive_layouts() -> None:
    files = config_drive_files(hostname="h1", user_data="#!/bin/sh\n", public_keys=["ssh-rsa AAA c"])
    meta = json.loads(files["openstack/latest/meta_data.json"])
    assert meta["hostname"] == "h1" and meta["public_keys"] == {"key0": "ssh-rsa AAA c"}
    assert files["cloudstack/userdata/user_data.txt"] == files["openstack/latest/user_data"] == "#!/bin/sh\n"
    assert files["cloudstack/metadata/public-keys.txt"] == "ssh-rsa AAA c\n"


def test_guest_modules_resolve_with_dependencies_first() -> None:
    try:
        tree = find_kernel()
    except ImageToolError as exc:
        pytest.skip(str(exc))
    order = [Path(p).name for p in ModuleIndex.load(tree).closure(GUEST_MODULES)]
    assert order.index("virtio.ko") < order.index("virtio_blk.ko")
    assert order.index("cdrom.ko") < order.index("sr_mod.ko") < order.index("isofs.ko") or (
        order.index("cdrom.ko") < order.index("isofs.ko")
    )
    assert {"virtio_pci.ko", "virtio_net.ko", "ata_piix.ko", "scsi_mod.ko"} <= set(order)
