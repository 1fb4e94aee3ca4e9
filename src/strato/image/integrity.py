"""Host-side reader of the strato-integrity block format (see guest/strato-integrity), so a test can
check a data disk the guest wrote without booting it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from strato.image.tools import run, which

MAGIC = b"STRATO-INT1"
SB_MAGIC = b"STRATO-INT1-SB"
HEADER = 128


@dataclass(frozen=True)
class BlockFailure:
    block: int
    reason: str


@dataclass
class IntegrityReport:
    """What verify found: generation per good block, and every bad block with why."""

    block_size: int = 0
    count: int = 0
    generations: dict[int, int] = field(default_factory=dict)
    failures: list[BlockFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.count > 0 and not self.failures

    def summary(self) -> str:
        """The line the guest would print."""
        if self.ok:
            return f"STRATO-INTEGRITY OK {self.count} blocks"
        return "; ".join(f"STRATO-INTEGRITY FAIL block {f.block} {f.reason}" for f in self.failures)


def payload(block: int, gen: int, size: int) -> bytes:
    """Same bytes as the guest's `yes "strato N G" | head -c SIZE`."""
    line = f"strato {block} {gen}\n".encode()
    return (line * (size // len(line) + 1))[:size]


def encode_block(block: int, gen: int, block_size: int) -> bytes:
    """One block as the guest writes it (used by tests to fabricate disks)."""
    body = payload(block, gen, block_size - HEADER)
    digest = hashlib.sha256(f"STRATO-INT1 {block} {gen}\n".encode() + body).hexdigest()
    header = f"STRATO-INT1 {block} {gen} {digest}".ljust(HEADER - 1).encode() + b"\n"
    return header + body


def encode_superblock(block_size: int, count: int) -> bytes:
    return f"STRATO-INT1-SB {block_size} {count}".ljust(HEADER - 1).encode() + b"\n" + bytes(block_size - HEADER)


def check_block(data: bytes, block: int) -> tuple[int | None, str]:
    """(generation, "") for a good block, (None, reason) for a bad one; reasons match the guest's."""
    words = data[:HEADER].split(b"\n", 1)[0].split()
    if len(words) < 4 or words[0] != MAGIC:
        return None, "bad-header"
    if words[1] != str(block).encode():
        return None, f"wrong-block {words[1].decode(errors='replace')}"
    gen_text = words[2].decode(errors="replace")
    digest = hashlib.sha256(b" ".join(words[:3]) + b"\n" + data[HEADER:]).hexdigest()
    if digest.encode() != words[3] or not gen_text.isdigit():
        return None, f"checksum gen {gen_text}"
    return int(gen_text), ""


def verify_stream(f: BinaryIO, expected_generations: Mapping[int, int] | None = None) -> IntegrityReport:
    """Check every block of a raw image opened for reading."""
    report = IntegrityReport()
    words = f.read(HEADER).split(b"\n", 1)[0].split()
    if len(words) < 3 or words[0] != SB_MAGIC or not (words[1].isdigit() and words[2].isdigit()):
        report.failures.append(BlockFailure(0, "superblock"))
        return report
    report.block_size, report.count = int(words[1]), int(words[2])
    for n in range(1, report.count + 1):
        f.seek(n * report.block_size)
        data = f.read(report.block_size)
        gen, reason = check_block(data, n) if len(data) == report.block_size else (None, "read-error")
        want = (expected_generations or {}).get(n)
        if gen is not None and want is not None and gen < want:
            reason = f"lost-write gen {gen} < {want}"
        if reason:
            report.failures.append(BlockFailure(n, reason))
        if gen is not None:
            report.generations[n] = gen
    return report


def image_format(path: Path) -> str:
    """qemu-img's idea of the file's format (raw, qcow2, ...)."""
    info = json.loads(run(["qemu-img", "info", "--output=json", path]))
    return str(info["format"])


def verify_image(path: Path | str, expected_generations: Mapping[int, int] | None = None) -> IntegrityReport:
    """Verify a raw file as is; any other format (qcow2, with its backing chain) via a raw copy."""
    path = Path(path)
    if image_format(path) == "raw":
        with path.open("rb") as f:
            return verify_stream(f, expected_generations)
    with tempfile.TemporaryDirectory(prefix="strato-verify-") as tmp:
        raw = Path(tmp) / "disk.raw"
        subprocess.run(
            [which("qemu-img"), "convert", "-U", "-O", "raw", str(path), str(raw)],
            check=True,
            capture_output=True,
        )
        with raw.open("rb") as f:
            return verify_stream(f, expected_generations)


def parse_generations(line: str) -> dict[int, int]:
    """Parse the guest's `STRATO-INTEGRITY-GENS 1:3 2:3 ...` line."""
    out: dict[int, int] = {}
    for word in line.split()[1:]:
        block, _, gen = word.partition(":")
        out[int(block)] = int(gen)
    return out
