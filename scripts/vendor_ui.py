"""Vendors the web UI's front-end libraries into src/strato/server/ui/vendor/ from the npm registry.

Each package is fetched with `npm pack` at a pinned version, its tarball checked against the pinned
integrity hash (npm's sha512), and only the files the UI loads are extracted (with the licences). The
result is committed (about 0.5 MB), so the server never needs Node; run this again to change a version
(`python scripts/vendor_ui.py`; `--check` only verifies that the committed files match the tarballs).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[1] / "src" / "strato" / "server" / "ui" / "vendor"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # npm's dist.integrity
    target: str  # directory under vendor/
    members: tuple[str, ...]  # paths in the tarball (under package/), or directory prefixes ending in /


PACKAGES = (
    Package(
        "preact",
        "10.29.8",
        "sha512-ej2aVZ+vZ8WO7tvlQWRM9N63A0KzF9q4mWJfDUHgYaIofWY9hu74QdnQrjoPMmZi2/nZ5gN0bJCQF49xQqx09Q==",
        "preact",
        ("dist/preact.module.js", "hooks/dist/hooks.module.js", "LICENSE"),
    ),
    Package(
        "htm",
        "3.1.1",
        "sha512-983Vyg8NwUE7JkZ6NmOqpCZ+sh1bKv2iYTlUkzlWmA5JD2acKoxd4KVxbMmxX/85mtfdnDmTFoNKcg5DGAvxNQ==",
        "htm",
        ("dist/htm.module.js", "LICENSE"),
    ),
    Package(
        "@novnc/novnc",
        "1.7.0",
        "sha512-ucEJOx4T2avIRCleodk7YobZj5O2Ga2AeLfQ69A/yjG9HHba2+PDgwSkN3FttrmG+70ZGx21sElNFouK13RzyA==",
        "novnc",
        ("core/", "vendor/pako/", "AUTHORS", "docs/LICENSE.MPL-2.0"),
    ),
)


def _pack(pkg: Package, into: Path) -> Path:
    out = subprocess.run(
        ["npm", "pack", f"{pkg.name}@{pkg.version}", "--pack-destination", str(into), "--silent"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    tarball = into / out[-1]
    algo, _, expected = pkg.integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algo, tarball.read_bytes()).digest()).decode()
    if digest != expected:
        sys.exit(f"{pkg.name}@{pkg.version}: integrity mismatch ({algo}-{digest}, pinned {pkg.integrity})")
    return tarball


def _wanted(pkg: Package, name: str) -> str | None:
    rel = name.removeprefix("package/")
    for member in pkg.members:
        if rel == member or (member.endswith("/") and rel.startswith(member)):
            return rel
    return None


def extract(pkg: Package, tarball: Path, dest: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    with tarfile.open(tarball) as tar:
        for info in tar.getmembers():
            rel = _wanted(pkg, info.name)
            if rel and info.isfile() and ".." not in Path(rel).parts and not rel.endswith(".map"):
                handle = tar.extractfile(info)
                assert handle is not None
                files[rel] = handle.read()
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="verify the committed files, change nothing")
    args = parser.parse_args()
    if shutil.which("npm") is None:
        sys.exit("npm is needed to vendor the UI's libraries (the server itself does not need it)")
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for pkg in PACKAGES:
            files = extract(pkg, _pack(pkg, Path(tmp)), VENDOR / pkg.target)
            root = VENDOR / pkg.target
            if args.check:
                for rel, data in files.items():
                    if not (root / rel).is_file() or (root / rel).read_bytes() != data:
                        print(f"differs: {pkg.target}/{rel}")
                        bad += 1
                continue
            shutil.rmtree(root, ignore_errors=True)
            for rel, data in files.items():
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(data)
            (root / "VERSION.txt").write_text(f"{pkg.name}@{pkg.version} {pkg.integrity}\n")
            print(f"{pkg.name}@{pkg.version}: {len(files)} files into {root.relative_to(VENDOR.parents[3])}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
