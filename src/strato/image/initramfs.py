"""The tiny guest's initramfs: busybox-static, the guest scripts and the virtio/CD modules, as newc cpio."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
from importlib import resources
from pathlib import Path

from strato.image.kernel import GUEST_MODULES, MODULE_PARAMS, KernelTree, ModuleIndex, copy_module
from strato.image.tools import ImageToolError, run, which

GUEST_SCRIPTS = {
    "init": "init",
    "strato-integrity": "bin/strato-integrity",
    "strato-configdrive": "bin/strato-configdrive",
    "strato-input": "bin/strato-input",
    "strato-net": "bin/strato-net",
    "strato-net-dhcp": "bin/strato-net-dhcp",
}
FIXED_MTIME = 946684800  # 2000-01-01: fixed timestamps keep the archive stable between builds


def find_busybox() -> Path:
    """busybox-static's binary; a dynamically linked busybox would not run without libc in the guest."""
    for candidate in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if candidate.is_file() and is_static_elf(candidate):
            return candidate
    raise ImageToolError("no statically linked busybox found: apt-get install busybox-static")


def is_static_elf(path: Path) -> bool:
    """True for a 64-bit ELF without a PT_INTERP program header (no dynamic loader needed)."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        (phoff,) = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def _guest_file(name: str) -> bytes:
    return resources.files("strato.image").joinpath("guest", name).read_bytes()


def stage_tree(tree: KernelTree, staging: Path) -> list[str]:
    """Fill `staging` with the initramfs contents; return the module load order written for the init."""
    (staging / "bin").mkdir(parents=True)
    for sub in (
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "mnt",
        "root",
        "etc/strato",
        "sbin",
        "usr/bin",
        "usr/sbin",
    ):
        (staging / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(find_busybox(), staging / "bin" / "busybox")
    (staging / "bin" / "busybox").chmod(0o755)
    (staging / "bin" / "sh").symlink_to("busybox")
    for name, rel in GUEST_SCRIPTS.items():
        dest = staging / rel
        dest.write_bytes(_guest_file(name))
        dest.chmod(0o755)
    index = ModuleIndex.load(tree)
    order = [copy_module(tree, rel, staging) for rel in index.closure(GUEST_MODULES)]
    lines = []
    for rel in order:
        params = MODULE_PARAMS.get(Path(rel).name.removesuffix(".ko").replace("-", "_"), "")
        lines.append(f"{rel} {params}".rstrip())
    (staging / "etc" / "strato" / "modules").write_text("\n".join(lines) + "\n")
    (staging / "etc" / "hostname").write_text("strato-tiny\n")
    builtin = tree.modules_dir / "modules.builtin"
    if builtin.is_file():
        shutil.copyfile(builtin, staging / "lib" / "modules" / tree.version / "modules.builtin")
    run(["depmod", "-b", staging, tree.version])  # so `modprobe` works in the guest's shell too
    return order


def pack_cpio(staging: Path, dest: Path, *, compress: bool = True) -> None:
    """Archive `staging` as newc cpio (owner root, fixed mtimes, sorted), gzip'd by default."""
    paths = sorted(str(p.relative_to(staging)) for p in staging.rglob("*"))
    for rel in [*paths, "."]:
        os.utime(staging / rel, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    listing = "".join(f"{p}\n" for p in paths).encode()
    proc = subprocess.run(
        [which("cpio"), "--quiet", "-o", "-H", "newc", "-R", "0:0", "--reproducible"],
        input=listing,
        cwd=staging,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ImageToolError(f"cpio failed: {proc.stderr.decode(errors='replace').strip()}")
    data = gzip.compress(proc.stdout, compresslevel=6, mtime=0) if compress else proc.stdout
    dest.write_bytes(data)
