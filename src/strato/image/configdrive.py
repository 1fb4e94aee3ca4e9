"""Host side of the config drive: an ISO 9660 image labelled config-2 that the tiny guest (and cloud-init)
reads for hostname, SSH keys and user data. Written in both the OpenStack and CloudStack layouts, as
CloudStack's own config drive is."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from strato.image.tools import ImageToolError, run

LABEL = "config-2"
FIXED_MTIME = 946684800


def config_drive_files(
    *, hostname: str, user_data: str | None, public_keys: list[str], instance_id: str | None = None
) -> dict[str, str]:
    """Relative path -> text of every file on the drive."""
    iid = instance_id or str(uuid.uuid5(uuid.NAMESPACE_DNS, hostname))
    keys = {f"key{i}": key.strip() for i, key in enumerate(public_keys)}
    meta = {
        "uuid": iid,
        "name": hostname,
        "hostname": hostname,
        "launch_index": 0,
        "public_keys": keys,
        "keys": [{"name": name, "type": "ssh", "data": key} for name, key in keys.items()],
    }
    files = {
        "openstack/latest/meta_data.json": json.dumps(meta, sort_keys=True) + "\n",
        "openstack/latest/vendor_data.json": "{}\n",
        "cloudstack/metadata/local-hostname.txt": hostname + "\n",
        "cloudstack/metadata/vm-name.txt": hostname + "\n",
        "cloudstack/metadata/instance-id.txt": iid + "\n",
        "cloudstack/metadata/public-keys.txt": "".join(k + "\n" for k in keys.values()),
    }
    if user_data is not None:
        files["openstack/latest/user_data"] = user_data
        files["cloudstack/userdata/user_data.txt"] = user_data
    return files


def _iso_command(src: Path, dest: Path) -> list[str | Path]:
    """genisoimage if present, else xorriso's mkisofs emulation (same options): Rock Ridge + Joliet."""
    opts: list[str | Path] = ["-quiet", "-V", LABEL, "-r", "-J", "-o", dest, src]
    if shutil.which("genisoimage"):
        return ["genisoimage", *opts]
    if shutil.which("xorriso"):
        return ["xorriso", "-as", "mkisofs", *opts]
    raise ImageToolError("neither genisoimage nor xorriso found: apt-get install genisoimage")


def build_config_drive(
    dest: Path,
    *,
    hostname: str,
    user_data: str | None,
    public_keys: list[str],
    instance_id: str | None = None,
) -> Path:
    """Write the ISO to `dest` (replaced atomically) and return its path."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="strato-cfg-", dir=dest.parent) as tmp:
        root = Path(tmp) / "root"
        files = config_drive_files(
            hostname=hostname, user_data=user_data, public_keys=public_keys, instance_id=instance_id
        )
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for path in [*root.rglob("*"), root]:
            os.utime(path, (FIXED_MTIME, FIXED_MTIME))
        partial = Path(tmp) / "config.iso"
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(FIXED_MTIME)}
        run(_iso_command(root, partial), env=env)
        partial.replace(dest)
    return dest
