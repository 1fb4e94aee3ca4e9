"""Layer files: qcow2 creation, inspection and rebasing with qemu-img, and sparse copies.

A copy is a plain sparse file copy (SEEK_DATA/SEEK_HOLE) rather than `qemu-img convert`: convert would
flatten the chain or rewrite the backing reference, while a moved layer must stay byte-identical and
keep pointing at its backing file until `rebase_layer` fixes the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from strato.agent.drivers.base import DriverError, ProgressFn
from strato.agent.drivers.qemu.pools import os_error
from strato.protocol.messages import ErrorCode, LayerInfo

QEMU_IMG = "qemu-img"
COPY_CHUNK = 4 * 1024 * 1024
QEMU_IMG_TIMEOUT_S = 120.0


async def run_qemu_img(*args: str, timeout: float = QEMU_IMG_TIMEOUT_S) -> str:
    """Run qemu-img; its stderr becomes the DriverError message on failure."""
    proc = await asyncio.create_subprocess_exec(
        QEMU_IMG,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip() or f"qemu-img {args[0]} failed"
        raise DriverError(qemu_img_error_code(message), message)
    return out.decode()


def qemu_img_error_code(message: str) -> ErrorCode:
    """The error code a qemu-img failure message implies."""
    if "No space left" in message:
        return ErrorCode.INSUFFICIENT_CAPACITY
    if "Failed to get" in message and "lock" in message:  # image locking: a running QEMU has it open
        return ErrorCode.INVALID_STATE
    return ErrorCode.INTERNAL


async def info(name: str, path: Path) -> LayerInfo:
    """Sizes and backing reference; `-U` so a layer in use by a running VM can be inspected too."""
    if not path.is_file():
        raise DriverError(ErrorCode.NOT_FOUND, f"layer {name} not found")
    data = json.loads(await run_qemu_img("info", "-U", "--output=json", str(path)))
    return LayerInfo(
        name=name,
        format=str(data["format"]),
        virtual_size=int(data["virtual-size"]),
        physical_size=int(data.get("actual-size", 0)),
        backing_file=data.get("backing-filename"),
    )


def reserve(path: Path) -> None:
    """Claim the target name atomically so two creations of one layer cannot both succeed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):  # a file where a directory should be
            raise DriverError(ErrorCode.BAD_REQUEST, f"cannot create {path.name}: {exc}") from exc
        raise os_error(exc, f"create {path.name}") from exc
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError as exc:
        raise DriverError(ErrorCode.ALREADY_EXISTS, f"{path.name} already exists") from exc
    except OSError as exc:
        raise os_error(exc, f"create {path.name}") from exc


async def create(path: Path, size_bytes: int | None, backing: Path | None) -> None:
    """`qemu-img create -f qcow2 [-b backing -F qcow2] path [size]`; never overwrites."""
    if backing is None and size_bytes is None:
        raise DriverError(ErrorCode.BAD_REQUEST, "a layer without backing needs a size")
    if size_bytes is not None and size_bytes <= 0:
        raise DriverError(ErrorCode.BAD_REQUEST, "size must be positive")
    if backing is not None and not backing.is_file():
        raise DriverError(ErrorCode.NOT_FOUND, f"backing layer {backing.name} not found")
    reserve(path)
    args = ["create", "-q", "-f", "qcow2"]
    if backing is not None:
        args += ["-b", str(backing), "-F", "qcow2"]
    args.append(str(path))
    if size_bytes is not None:
        args.append(str(size_bytes))
    try:
        await run_qemu_img(*args)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


async def rebase(path: Path, backing: Path | None) -> None:
    """Unsafe (metadata-only) rebase: the new backing must hold the same data as the old one."""
    if not path.is_file():
        raise DriverError(ErrorCode.NOT_FOUND, f"layer {path.name} not found")
    if backing is not None and not backing.is_file():
        raise DriverError(ErrorCode.NOT_FOUND, f"backing layer {backing.name} not found")
    if backing is None:
        await run_qemu_img("rebase", "-u", "-b", "", str(path))
    else:
        await run_qemu_img("rebase", "-u", "-b", str(backing), "-F", "qcow2", str(path))


TRASH_DIR = ".strato-trash"
"""Where a pool's removed layer files wait for their blocks to be freed (beside the pool's marker)."""


def remove(path: Path, missing_ok: bool, pool_root: Path | None = None) -> None:
    """Removes a layer file: moved at once into the pool's trash directory (so the layer's name and its
    directory are free when this returns), its blocks freed by a background thread, since unlinking a
    large file costs ext4 about a second per GiB. A file left in the trash by an agent that died
    meanwhile is swept at the next start."""
    root = pool_root or path.parent
    trash = root / TRASH_DIR
    doomed = trash / f".{path.name}.{uuid.uuid4().hex[:8]}.removing"
    try:
        trash.mkdir(exist_ok=True)
        path.rename(doomed)
    except FileNotFoundError as exc:
        if not missing_ok:
            raise DriverError(ErrorCode.NOT_FOUND, f"layer {path.name} not found") from exc
        return
    except OSError as exc:
        raise os_error(exc, f"remove {path.name}") from exc

    def unlink() -> None:
        with contextlib.suppress(OSError):
            doomed.unlink()

    threading.Thread(target=unlink, name=f"remove-{path.name}", daemon=True).start()


class _CopyCancelled(Exception):
    """Raised in the copy thread when the awaiting task was cancelled."""


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the allocated regions; the holes between them stay holes in the copy."""
    extents: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        extents.append((start, end - start))
        pos = end
    return extents


def _copy_sparse(
    source: Path,
    tmp: Path,
    bandwidth: int | None,
    report: Callable[[int, int], None],
    cancelled: threading.Event,
) -> None:
    """Copy the data extents of source into a new file tmp, throttled, checking for cancellation."""
    with open(source, "rb") as src, open(tmp, "xb") as dst:
        size = os.fstat(src.fileno()).st_size
        extents = _data_extents(src.fileno(), size)
        total = sum(length for _, length in extents)
        done = 0
        started = time.monotonic()
        report(0, total)
        for offset, length in extents:
            pos = offset
            while pos < offset + length:
                if cancelled.is_set():
                    raise _CopyCancelled
                chunk = os.pread(src.fileno(), min(COPY_CHUNK, offset + length - pos), pos)
                if not chunk:
                    break
                os.pwrite(dst.fileno(), chunk, pos)
                pos += len(chunk)
                done += len(chunk)
                report(done, total)
                if bandwidth:
                    ahead = done / bandwidth - (time.monotonic() - started)
                    if ahead > 0:
                        cancelled.wait(ahead)
        dst.truncate(size)
        os.fsync(dst.fileno())


async def copy(source: Path, target: Path, bandwidth: int | None, progress: ProgressFn) -> None:
    """Sparse copy into a hidden temporary file, then link it into place (never overwriting).

    Cancelling the awaiting task stops the copy thread and removes the partial file.
    """
    if not source.is_file():
        raise DriverError(ErrorCode.NOT_FOUND, f"layer {source.name} not found")
    if target.exists():
        raise DriverError(ErrorCode.ALREADY_EXISTS, f"{target.name} already exists")
    if bandwidth is not None and bandwidth <= 0:
        raise DriverError(ErrorCode.BAD_REQUEST, "bandwidth must be positive")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.copying")
    loop = asyncio.get_running_loop()
    cancelled = threading.Event()

    def report(done: int, total: int) -> None:
        loop.call_soon_threadsafe(progress, done, total)

    worker = asyncio.ensure_future(asyncio.to_thread(_copy_sparse, source, tmp, bandwidth, report, cancelled))
    try:
        try:
            await asyncio.shield(worker)
        except asyncio.CancelledError:
            cancelled.set()
            with contextlib.suppress(BaseException):
                await worker
            raise
        os.link(tmp, target)
    except FileExistsError as exc:
        raise DriverError(ErrorCode.ALREADY_EXISTS, f"{target.name} already exists") from exc
    except OSError as exc:
        raise os_error(exc, f"copy {source.name} to {target.name}") from exc
    finally:
        tmp.unlink(missing_ok=True)
