"""Shared by both drivers for `fetch_image`: checksum strings, URL kinds, and a qcow2 header check.

The header check reads the qcow2 header directly (no qemu-img), so the simulator can apply exactly the
same rules as the real driver to real files, and the real driver can refuse a dangerous image before
any QEMU code opens it.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from strato.agent.drivers.base import DriverError
from strato.protocol.messages import ErrorCode

ALGORITHM_BY_HEX_LENGTH = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
_PREFIXED = re.compile(r"^\{([A-Za-z0-9]+)\}([0-9A-Fa-f]+)$")
_HEX = re.compile(r"^[0-9A-Fa-f]+$")

QCOW2_MAGIC = b"QFI\xfb"
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


@dataclass(frozen=True)
class Checksum:
    """An expected digest: `algorithm` is one of md5, sha1, sha256, sha512; `hexdigest` is lower case."""

    algorithm: str
    hexdigest: str

    def hasher(self) -> Hasher:
        return hashlib.new(self.algorithm)

    def verify(self, actual_hex: str, what: str) -> None:
        """BAD_REQUEST naming both digests when they differ."""
        if actual_hex.lower() != self.hexdigest:
            raise DriverError(
                ErrorCode.BAD_REQUEST,
                f"checksum mismatch for {what}: expected {self.algorithm} {self.hexdigest}, got {actual_hex.lower()}",
            )


def parse_checksum(text: str | None) -> Checksum | None:
    """ "{md5}hex", "{sha1}hex", "{sha256}hex", "{sha512}hex", or bare hex whose length names the
    algorithm (32 md5, 40 sha1, 64 sha256, 128 sha512). None or "" means no check."""
    if text is None or not text.strip():
        return None
    value = text.strip()
    match = _PREFIXED.match(value)
    if match:
        algorithm, digest = match.group(1).lower(), match.group(2)
        expected_length = {v: k for k, v in ALGORITHM_BY_HEX_LENGTH.items()}.get(algorithm)
        if expected_length is None:
            raise DriverError(
                ErrorCode.BAD_REQUEST,
                f"unsupported checksum algorithm {algorithm!r}: md5, sha1, sha256, sha512",
            )
        if len(digest) != expected_length:
            raise DriverError(
                ErrorCode.BAD_REQUEST,
                f"a {algorithm} checksum has {expected_length} hex digits, got {len(digest)}",
            )
        return Checksum(algorithm, digest.lower())
    if _HEX.match(value):
        algorithm_or_none = ALGORITHM_BY_HEX_LENGTH.get(len(value))
        if algorithm_or_none is None:
            raise DriverError(
                ErrorCode.BAD_REQUEST,
                f"cannot tell the checksum algorithm from {len(value)} hex digits (32, 40, 64 or 128)",
            )
        return Checksum(algorithm_or_none, value.lower())
    raise DriverError(ErrorCode.BAD_REQUEST, f"malformed checksum {text!r}: expected hex or {{algo}}hex")


def url_kind(url: str) -> Literal["http", "file"]:
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return "http"
    if scheme == "file":
        return "file"
    raise DriverError(ErrorCode.BAD_REQUEST, f"unsupported URL scheme {scheme!r}: use http, https or file")


def file_url_path(url: str) -> Path:
    """The host path of a file:// URL (file:///abs/path or file://localhost/abs/path)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
        raise DriverError(ErrorCode.BAD_REQUEST, f"a file URL names a path on this host: {url!r}")
    path = unquote(parts.path)
    if not path.startswith("/") or "\0" in path:
        raise DriverError(ErrorCode.BAD_REQUEST, f"a file URL needs an absolute path: {url!r}")
    return Path(path)


def display_url(url: str) -> str:
    """The URL without user:password, for messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


@dataclass(frozen=True)
class Qcow2Header:
    version: int
    virtual_size: int
    backing_file: str | None
    external_data_file: bool


def read_qcow2_header(path: Path) -> Qcow2Header | None:
    """The header fields that matter for safety, or None if the file is not a qcow2 image."""
    with open(path, "rb") as f:
        head = f.read(104)
        if len(head) < 72 or head[:4] != QCOW2_MAGIC:
            return None
        version, backing_offset, backing_size = struct.unpack(">IQI", head[4:20])
        (virtual_size,) = struct.unpack(">Q", head[24:32])
        incompatible = 0
        if version >= 3 and len(head) >= 80:
            (incompatible,) = struct.unpack(">Q", head[72:80])
        backing: str | None = None
        if backing_offset:
            f.seek(backing_offset)
            backing = f.read(min(backing_size, 1023)).decode(errors="replace") or "(unnamed)"
    return Qcow2Header(
        version=version,
        virtual_size=virtual_size,
        backing_file=backing,
        external_data_file=bool(incompatible & _QCOW2_INCOMPAT_DATA_FILE),
    )


def check_fetched_qcow2(path: Path, what: str) -> Qcow2Header:
    """Refuse what is not a qcow2 image, or one that would make QEMU open other files on this host
    (a backing file or an external data file): a downloaded image must be self-contained."""
    header = read_qcow2_header(path)
    if header is None:
        raise DriverError(ErrorCode.BAD_REQUEST, f"{what} is not a qcow2 image")
    if header.backing_file is not None:
        raise DriverError(
            ErrorCode.BAD_REQUEST,
            f"{what} refused: it has a backing file ({header.backing_file!r}); a fetched image must be standalone",
        )
    if header.external_data_file:
        raise DriverError(ErrorCode.BAD_REQUEST, f"{what} refused: it uses an external data file")
    return header
