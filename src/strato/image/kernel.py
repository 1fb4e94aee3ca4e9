"""Find a Debian kernel and its modules, and the modules a tiny virtio guest needs (with dependencies).

The kernel comes from the host's installed package when it is there (/boot + /lib/modules), else from the
package file in apt's cache or fetched with `apt-get download`, unpacked with `dpkg-deb -x` into a cache dir.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from strato.image.tools import ImageToolError, run, which

KernelSource = Literal["auto", "host", "deb"]

META_PACKAGE = "linux-image-amd64"
APT_ARCHIVES = Path("/var/cache/apt/archives")

# Module names (as in modules.dep, '-' and '_' equal) loaded by the tiny guest, in this order.
# virtio for disks/net/SCSI; ata_piix/ahci + sr_mod + isofs for a config drive on an IDE/SATA/SCSI CD;
# vfat + nls (default iocharset ascii) for a config drive on a FAT disk;
# qemu_fw_cfg for `-fw_cfg name=opt/strato/run`.
GUEST_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_scsi",
    "ata_piix",
    "ahci",
    "sd_mod",
    "sr_mod",
    "isofs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_iso8859_1",
    "nls_utf8",
    "qemu_fw_cfg",
)
# Module parameters written next to the module in the guest's load list.
MODULE_PARAMS = {"scsi_mod": "scan=sync"}


@dataclass(frozen=True)
class KernelTree:
    """A kernel image and the root its modules live under (`root/lib/modules/<version>`)."""

    version: str
    vmlinuz: Path
    root: Path

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.version


def default_cache_dir() -> Path:
    """Where unpacked kernel packages are kept between builds."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "strato" / "kernel"


def kernel_package() -> tuple[str, str | None]:
    """(package name, version or None) of the kernel that Debian's `linux-image-amd64` points to."""
    try:
        depends = run(["dpkg-query", "-W", "-f", "${Depends}", META_PACKAGE]).strip()
    except ImageToolError:
        depends = ""
    match = re.match(r"(linux-image-[^\s,(|]+)\s*(?:\(=\s*([^)\s]+)\))?", depends)
    if match:
        return match.group(1), match.group(2)
    debs = sorted(APT_ARCHIVES.glob("linux-image-[0-9]*-amd64_*.deb"))
    if debs:
        return debs[-1].name.split("_", 1)[0], None
    raise ImageToolError(f"no kernel package found: apt-get install {META_PACKAGE}")


def _host_tree(version: str) -> KernelTree | None:
    vmlinuz = Path("/boot") / f"vmlinuz-{version}"
    tree = KernelTree(version, vmlinuz, Path("/"))
    if os.access(vmlinuz, os.R_OK) and (tree.modules_dir / "modules.dep").is_file():
        return tree
    return None


def _find_deb(package: str, version: str | None, download_dir: Path) -> Path:
    """The package file: apt's cache first, then `apt-get download` (works without root)."""
    pattern = f"{package}_{version.replace(':', '%3a')}_*.deb" if version else f"{package}_*.deb"
    for folder in (APT_ARCHIVES, download_dir):
        found = sorted(folder.glob(pattern))
        if found:
            return found[-1]
    download_dir.mkdir(parents=True, exist_ok=True)
    run(["apt-get", "download", f"{package}={version}" if version else package], cwd=download_dir)
    found = sorted(download_dir.glob(pattern))
    if not found:
        raise ImageToolError(f"apt-get download {package} produced no {pattern}")
    return found[-1]


def _deb_tree(package: str, version: str | None, cache_dir: Path) -> KernelTree:
    """Unpack the kernel package once into the cache and index its modules with `depmod -b`."""
    deb = _find_deb(package, version, cache_dir / "debs")
    target = cache_dir / deb.name.removesuffix(".deb")
    kversion = package.removeprefix("linux-image-").removesuffix("-unsigned")
    if not (target / ".complete").is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache_dir))
        try:
            run(["dpkg-deb", "-x", deb, staging])
            if not (staging / "lib" / "modules").is_dir() and (staging / "usr/lib/modules").is_dir():
                (staging / "lib").mkdir(exist_ok=True)
                (staging / "lib" / "modules").symlink_to("../usr/lib/modules")
            run(["depmod", "-b", staging, kversion])
            (staging / ".complete").write_text(deb.name + "\n")
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    tree = KernelTree(kversion, target / "boot" / f"vmlinuz-{kversion}", target)
    if not tree.vmlinuz.is_file():
        raise ImageToolError(f"{deb} holds no boot/vmlinuz-{kversion}")
    return tree


def find_kernel(cache_dir: Path | None = None, source: KernelSource = "auto") -> KernelTree:
    """The kernel to put into the image: the installed one if readable, else the unpacked package."""
    package, version = kernel_package()
    kversion = package.removeprefix("linux-image-").removesuffix("-unsigned")
    if source in ("auto", "host"):
        tree = _host_tree(kversion)
        if tree is not None:
            return tree
        if source == "host":
            raise ImageToolError(f"kernel {kversion} is not installed readable in /boot and /lib/modules")
    return _deb_tree(package, version, cache_dir or default_cache_dir())


def _norm(name: str) -> str:
    return name.replace("-", "_")


def _module_name(path: str) -> str:
    return _norm(Path(path).name.split(".ko", 1)[0])


@dataclass
class ModuleIndex:
    """modules.dep, modules.softdep and modules.alias of one kernel, for dependency closure."""

    deps: dict[str, tuple[str, list[str]]]  # name -> (relative path, dependency paths)
    softdeps: dict[str, list[str]]  # name -> "pre:" names or aliases
    aliases: dict[str, list[str]]  # alias -> module names
    builtin: set[str]

    @classmethod
    def load(cls, tree: KernelTree) -> ModuleIndex:
        mdir = tree.modules_dir
        deps: dict[str, tuple[str, list[str]]] = {}
        for line in (mdir / "modules.dep").read_text().splitlines():
            path, _, rest = line.partition(":")
            deps[_module_name(path)] = (path, rest.split())
        softdeps: dict[str, list[str]] = {}
        aliases: dict[str, list[str]] = {}
        if (mdir / "modules.softdep").is_file():
            for line in (mdir / "modules.softdep").read_text().splitlines():
                words = line.split()
                if len(words) > 3 and words[0] == "softdep" and words[2] == "pre:":
                    pre = [w for w in words[3:] if not w.endswith(":")]
                    softdeps[_norm(words[1])] = pre
        if (mdir / "modules.alias").is_file():
            for line in (mdir / "modules.alias").read_text().splitlines():
                words = line.split()
                if len(words) == 3 and words[0] == "alias" and "*" not in words[1]:
                    aliases.setdefault(words[1], []).append(_norm(words[2]))
        builtin: set[str] = set()
        if (mdir / "modules.builtin").is_file():
            builtin = {_module_name(p) for p in (mdir / "modules.builtin").read_text().split()}
        return cls(deps, softdeps, aliases, builtin)

    def _softdep_modules(self, name: str) -> list[str]:
        """Resolve softdep names: a module of that name, else its `_generic` alias (TCG lacks CPU extras)."""
        out: list[str] = []
        for want in self.softdeps.get(name, []):
            if _norm(want) in self.deps:
                out.append(_norm(want))
                continue
            targets = self.aliases.get(want, [])
            generic = [t for t in targets if t.endswith("_generic")]
            out.extend(generic or targets)
        return out

    def closure(self, names: tuple[str, ...] | list[str]) -> list[str]:
        """Relative paths of the named modules and all they need, dependencies first."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            name = _norm(name)
            if name in seen or name in self.builtin:
                return
            seen.add(name)
            if name not in self.deps:
                return  # optional module this kernel lacks or builds in
            for pre in self._softdep_modules(name):
                visit(pre)
            path, dep_paths = self.deps[name]
            for dep in reversed(dep_paths):  # modules.dep lists the deepest dependency last
                visit(_module_name(dep))
            order.append(path)

        for name in names:
            visit(name)
        return order


def copy_module(tree: KernelTree, relpath: str, dest_root: Path) -> str:
    """Copy one module below dest_root/lib/modules/<version>, uncompressed; return its new relative path."""
    src = tree.modules_dir / relpath
    rel = relpath.split(".ko", 1)[0] + ".ko"
    dest = dest_root / "lib" / "modules" / tree.version / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if relpath.endswith(".ko"):
        shutil.copyfile(src, dest)
    elif relpath.endswith(".ko.xz"):
        dest.write_bytes(lzma.decompress(src.read_bytes()))
    elif relpath.endswith(".ko.gz"):
        dest.write_bytes(gzip.decompress(src.read_bytes()))
    elif relpath.endswith(".ko.zst"):
        with dest.open("wb") as out:
            subprocess.run([which("zstd"), "-dc", str(src)], stdout=out, check=True)
    else:
        raise ImageToolError(f"unknown module format: {relpath}")
    return rel
