"""Pool directories: where a layer name may point, and how full a pool is.

Layer names come from the server; a name that escapes its pool's directory could make the agent read,
overwrite or delete any file on the host, so every path is checked here before it is used.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

from strato.agent.drivers.base import DriverError
from strato.protocol.messages import ErrorCode, LayerRef, PoolRef, PoolReport


def pool_dir(pool: PoolRef) -> Path:
    """The pool's directory as an absolute, normalized path (not resolved: pools may be symlinks)."""
    if not pool.path or not os.path.isabs(pool.path) or "\0" in pool.path:
        raise DriverError(ErrorCode.BAD_REQUEST, f"pool {pool.id}: path must be absolute: {pool.path!r}")
    return Path(os.path.normpath(pool.path))


def layer_path(layer: LayerRef) -> Path:
    """The file of a layer; refuses names that are absolute or leave the pool's directory."""
    base = pool_dir(layer.pool)
    name = layer.name
    if not name or "\0" in name or os.path.isabs(name):
        raise DriverError(ErrorCode.BAD_REQUEST, f"invalid layer name {name!r}")
    # Only canonical relative names: one file has one name, which the server's records rely on.
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise DriverError(ErrorCode.BAD_REQUEST, f"layer name {name!r} must be a plain path inside its pool")
    path = Path(os.path.normpath(base / name))
    real_base = Path(os.path.realpath(base))
    real = Path(os.path.realpath(path))
    if (path.parent != base and base not in path.parents) or real_base not in real.parents:
        raise DriverError(ErrorCode.BAD_REQUEST, f"layer name {name!r} must stay inside its pool")
    return path


def pool_report(pool: PoolRef) -> PoolReport:
    """Capacity of the file system holding the pool (statvfs); used = total - free."""
    path = pool_dir(pool)
    try:
        st = os.statvfs(path)
    except FileNotFoundError as exc:
        raise DriverError(ErrorCode.NOT_FOUND, f"pool {pool.id}: {path} does not exist") from exc
    total = st.f_blocks * st.f_frsize
    free = st.f_bfree * st.f_frsize
    available = st.f_bavail * st.f_frsize
    return PoolReport(
        id=pool.id, path=str(path), capacity_bytes=total, used_bytes=total - free, available_bytes=available
    )


def attach(pool: PoolRef, create: bool) -> PoolReport:
    """Make sure the pool's directory exists (creating it when asked) and report its capacity."""
    path = pool_dir(pool)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    elif not path.is_dir():
        raise DriverError(ErrorCode.NOT_FOUND, f"pool {pool.id}: {path} is not a directory")
    return pool_report(pool)


def os_error(exc: OSError, what: str) -> DriverError:
    """Map an OSError to the error code the server understands."""
    if exc.errno == errno.ENOENT:
        return DriverError(ErrorCode.NOT_FOUND, f"{what}: {exc.strerror}")
    if exc.errno == errno.EEXIST:
        return DriverError(ErrorCode.ALREADY_EXISTS, f"{what}: {exc.strerror}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DriverError(ErrorCode.INSUFFICIENT_CAPACITY, f"{what}: {exc.strerror}")
    return DriverError(ErrorCode.INTERNAL, f"{what}: {exc}")


def prune_empty_dirs(directory: Path, pool_root: Path) -> None:
    """Removes directories left empty by a layer's removal (e.g. volumes/<id>/), up to the pool's root."""
    root = pool_root.resolve()
    current = directory.resolve()
    while current != root and root in current.parents:
        try:
            current.rmdir()
        except OSError:
            return  # not empty (or gone): stop here
        current = current.parent


TEMP_FILE = re.compile(r"^\..+\.[0-9a-f]{8}\.(copying|fetching|converting|removing)$")


def sweep_stale_temp_files(root: Path, older_than: float) -> list[Path]:
    """Removes the hidden partial files of copies, downloads and conversions, and the files being removed,
    that an earlier life of the agent left when it stopped (older than this agent's start, so none of its
    own tasks)."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for path in root.rglob(".*"):
        try:
            if TEMP_FILE.match(path.name) and path.is_file() and path.stat().st_mtime < older_than:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


REGISTRY_FILE = "attached-pools.json"


def remember(data_dir: Path, pool: PoolRef) -> None:
    """Record an attached pool (id -> directory) so that the layer endpoint can serve it by id, also
    after an agent restart; written only when it changes."""
    path = data_dir / REGISTRY_FILE
    known = _registry(data_dir)
    directory = str(pool_dir(pool))
    if known.get(pool.id) == directory:
        return
    known[pool.id] = directory
    tmp = path.with_name(f".{REGISTRY_FILE}.tmp")
    tmp.write_text(json.dumps(known, indent=2, sort_keys=True))
    os.replace(tmp, path)


def attached(data_dir: Path, pool_id: str) -> PoolRef | None:
    """The pool of that id this agent attached, or None."""
    directory = _registry(data_dir).get(pool_id)
    return PoolRef(id=pool_id, path=directory) if directory else None


def attached_at(data_dir: Path, path: str) -> PoolRef | None:
    """The attached pool whose directory is `path`, or None."""
    wanted = os.path.realpath(path)
    for pool_id, directory in _registry(data_dir).items():
        if os.path.realpath(directory) == wanted:
            return PoolRef(id=pool_id, path=directory)
    return None


def _registry(data_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((data_dir / REGISTRY_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
