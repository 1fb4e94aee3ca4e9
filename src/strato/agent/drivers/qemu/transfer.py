"""Host-to-host layer copies: serving a layer file to another agent, and pulling one from it.

The data goes straight from agent to agent over HTTP (the source's `GET /v1/layers`, its token), not
through the server. The file travels byte for byte, so the copy is identical and keeps its backing
reference; runs of zeros are not written, so the copy stays sparse (a qcow2 file made with metadata
preallocation is mostly holes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from pathlib import Path

import httpx

from strato.agent.drivers.base import DriverError, ProgressFn
from strato.agent.drivers.layerexport import OpenedLayer
from strato.agent.drivers.qemu import layers, pools
from strato.agent.drivers.qemu.pools import os_error
from strato.agent.drivers.qemu.stall import stall_message, stall_seconds
from strato.protocol.messages import AgentError, ErrorCode, LayerInfo, LayerRef

BLOCK = 64 * 1024
"""Zero detection unit: a qcow2 cluster; an all-zero block becomes a hole."""
WRITE_BATCH = 4 * 1024 * 1024
CONNECT_TIMEOUT_S = 10.0
_ZEROS = bytes(BLOCK)


def open_layer(data_dir: Path, pool_id: str, name: str, pool_path: str | None = None) -> OpenedLayer:
    """Open a layer of a pool this agent attached, for the layer endpoint. The host's local pool is
    attached under the agent's own name for it, so a pool id the agent does not know is also found by
    its directory (`pool_path`), which must be an attached pool's."""
    pool = pools.attached(data_dir, pool_id)
    if pool is None and pool_path:
        pool = pools.attached_at(data_dir, pool_path)
    if pool is None:
        raise DriverError(ErrorCode.NOT_FOUND, f"no attached pool {pool_id!r}")
    path = pools.layer_path(LayerRef(pool=pool, name=name))  # BAD_REQUEST when the name escapes
    try:
        file = open(path, "rb")  # noqa: SIM115  # the endpoint closes it after streaming
    except FileNotFoundError as exc:
        raise DriverError(ErrorCode.NOT_FOUND, f"layer {name} not found in pool {pool_id}") from exc
    except IsADirectoryError as exc:
        raise DriverError(ErrorCode.NOT_FOUND, f"{name} is not a layer file") from exc
    except OSError as exc:
        raise os_error(exc, f"open {name}") from exc
    size = os.fstat(file.fileno()).st_size
    return OpenedLayer(file=file, size=size)


def _write_sparse(fd: int, data: memoryview, offset: int) -> None:
    """Write `data` at `offset`, leaving the all-zero blocks as holes (the file is new and empty)."""
    for start in range(0, len(data), BLOCK):
        block = data[start : start + BLOCK]
        if block != _ZEROS[: len(block)]:
            os.pwrite(fd, block, offset + start)


async def _error_of(response: httpx.Response) -> DriverError:
    body = await response.aread()
    try:
        error = AgentError.model_validate_json(body)
    except ValueError:
        return DriverError(ErrorCode.INTERNAL, f"source agent answered {response.status_code}: {body[:200]!r}")
    return DriverError(error.code, f"source agent: {error.message}")


async def pull(
    source_agent_url: str,
    source_token: str,
    source: LayerRef,
    target: LayerRef,
    bandwidth: int | None,
    progress: ProgressFn,
) -> LayerInfo:
    """Stream the source agent's layer into a hidden temporary file next to the target, then link it
    into place (never overwriting); the temporary file goes on failure or cancellation."""
    if bandwidth is not None and bandwidth <= 0:
        raise DriverError(ErrorCode.BAD_REQUEST, "bandwidth must be positive")
    path = pools.layer_path(target)
    if path.exists():
        raise DriverError(ErrorCode.ALREADY_EXISTS, f"{target.name} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.copying")  # swept if the agent dies
    url = source_agent_url.rstrip("/") + "/v1/layers"
    params = {"pool": source.pool.id, "name": source.name, "path": source.pool.path}
    headers = {"Authorization": f"Bearer {source_token}"}
    # The read timeout is the stall watch: no byte received for stall_s (a dead peer leaves the
    # connection open for TCP's ~15 min otherwise); the bandwidth sleeps happen between reads.
    stall_s = stall_seconds()
    timeout = httpx.Timeout(stall_s, connect=CONNECT_TIMEOUT_S)
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            async with (
                httpx.AsyncClient(timeout=timeout) as client,
                client.stream("GET", url, params=params, headers=headers) as response,
            ):
                if response.status_code != 200:
                    raise await _error_of(response)
                total = int(response.headers.get("content-length", "0"))
                done = 0
                started = time.monotonic()
                progress(0, total)
                pending = bytearray()
                async for chunk in response.aiter_bytes():
                    pending += chunk
                    if len(pending) < WRITE_BATCH:
                        continue
                    cut = len(pending) - len(pending) % BLOCK
                    _write_sparse(fd, memoryview(pending)[:cut], done)
                    done += cut
                    del pending[:cut]
                    progress(done, total)
                    if bandwidth:
                        ahead = done / bandwidth - (time.monotonic() - started)
                        if ahead > 0:
                            await asyncio.sleep(ahead)
                _write_sparse(fd, memoryview(pending), done)
                done += len(pending)
                if done != total:
                    raise DriverError(ErrorCode.INTERNAL, f"layer {source.name}: got {done} of {total} bytes")
            os.ftruncate(fd, done)
            await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
        progress(done, total)
    except httpx.HTTPError as exc:
        why = _why(exc, stall_s)
        raise DriverError(ErrorCode.INTERNAL, f"pulling {source.name} from {source_agent_url}: {why}") from exc
    except FileExistsError as exc:
        raise DriverError(ErrorCode.ALREADY_EXISTS, f"{target.name} already exists") from exc
    except OSError as exc:
        raise os_error(exc, f"pull {source.name} to {target.name}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return await layers.info(target.name, path)


def _why(exc: httpx.HTTPError, stall_s: float) -> str:
    """An HTTP failure in words: httpx's timeouts often carry no message at all."""
    text = str(exc).strip()
    if isinstance(exc, httpx.ConnectTimeout):
        why = f"no answer from the source host's agent within {CONNECT_TIMEOUT_S:g} s (connect timeout)"
    elif isinstance(exc, httpx.ReadTimeout):
        why = stall_message(stall_s).replace("reached the target host", "came from the source host") + " (read timeout)"
    else:
        why = type(exc).__name__
    return f"{why}: {text}" if text else why
