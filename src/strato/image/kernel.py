"""Find a Debian kernel and its modules, and the modules a tiny virtio guest needs (with dependencies).

The guest kernel is taken from the Debian package file, never installed: the package that
`linux-image-amd64` depends on is found in apt's cache or fetched with `apt-get download` into
~/.cache/strato/kernel/debs, and unpacked with `dpkg-deb -x` next to it. The host's /boot and
/lib/modules are used only when asked for (`source="host"`, or `"auto"` when that exact version is
installed), so building the image never depends on, or changes, the host's own boot set-up.
"""

from __future__ import annotations

import fcntl
import gzip
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from strato.image.tools import ImageToolError, run, which

KernelSource = Literal["auto", "host", "deb"]
KERNEL_SOURCES: tuple[KernelSource, ...] = ("auto", "host", "deb")
SOURCE_ENV = "STRATO_KERNEL_SOURCE"

META_PACKAGE = "linux-image-amd64"
APT_ARCHIVES = Path("/var/cache/apt/archives")

# Module names (as in modules.dep, '-' and '_' equal) loaded by the tiny guest, in this order.
# virtio for disks/net/SCSI; ata_piix/ahci + sr_mod + isofs for a config drive on an IDE/SATA/SCSI CD;
# vfat + nls (default iocharset ascii) for a config drive on a FAT disk;
# qemu_fw_cfg for `-fw_cfg name=opt/strato/run`; button + evdev for the ACPI power button (a graceful stop
# powers the guest off) and the keyboard's events (a key ends an integrity loop early).
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
    "button",
    "evdev",
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
    """Where downloaded and unpacked kernel packages are kept between builds."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "strato" / "kernel"


def default_source() -> KernelSource:
    """`$STRATO_KERNEL_SOURCE` (auto, host or deb), else "deb": the host's boot files are not needed."""
    value = os.environ.get(SOURCE_ENV, "deb").strip().lower() or "deb"
    if value not in KERNEL_SOURCES:
        raise ImageToolError(f"{SOURCE_ENV}={value!r}: expected one of {', '.join(KERNEL_SOURCES)}")
    return value


_DEPENDS = re.compile(r"(linux-image-[^\s,(|]+)\s*(?:\(=\s*([^)\s]+)\))?")


def _meta_depends() -> str:
    """Depends of `linux-image-amd64`: apt's candidate (downloadable now), else the installed one."""
    try:
        shown = run(["apt-cache", "show", "--no-all-versions", META_PACKAGE])
        for line in shown.splitlines():
            if line.startswith("Depends:"):
                return line.removeprefix("Depends:").strip()
    except ImageToolError:
        pass
    try:
        status = run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}|${Depends}", META_PACKAGE])
    except ImageToolError:
        return ""
    abbrev, _, depends = status.partition("|")
    return depends.strip() if abbrev.startswith("ii") else ""


def kernel_package(cache_dir: Path | None = None) -> tuple[str, str | None]:
    """(package name, version or None) of the kernel that Debian's `linux-image-amd64` points to."""
    match = _DEPENDS.match(_meta_depends())
    if match:
        return match.group(1), match.group(2)
    folders = [(cache_dir or default_cache_dir()) / "debs", APT_ARCHIVES]
    debs = sorted(d for folder in folders for d in folder.glob("linux-image-[0-9]*-amd64_*.deb"))
    if debs:
        return debs[-1].name.split("_", 1)[0], None
    raise ImageToolError(f"no kernel package known to apt: run apt-get update (the {META_PACKAGE} candidate)")


def _host_tree(version: str) -> KernelTree | None:
    vmlinuz = Path("/boot") / f"vmlinuz-{version}"
    tree = KernelTree(version, vmlinuz, Path("/"))
    if os.access(vmlinuz, os.R_OK) and (tree.modules_dir / "modules.dep").is_file():
        return tree
    return None


@contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    """One download/unpack at a time per cache dir (parallel test workers build images at once)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _find_deb(package: str, version: str | None, download_dir: Path) -> Path:
    """The package file: our download dir, apt's cache, else `apt-get download` (installs nothing)."""
    pattern = f"{package}_{version.replace(':', '%3a')}_*.deb" if version else f"{package}_*.deb"
    for folder in (download_dir, APT_ARCHIVES):
        found = sorted(folder.glob(pattern))
        if found:
            return found[-1]
    download_dir.mkdir(parents=True, exist_ok=True)
    # As root apt would hand the download to the _apt user, who may not write here: stay root for it.
    sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    run(["apt-get", "download", "-q", *sandbox, f"{package}={version}" if version else package], cwd=download_dir)
    found = sorted(download_dir.glob(pattern))
    if not found:
        raise ImageToolError(f"apt-get download {package} produced no {pattern}")
    return found[-1]


def fetch_kernel_deb(cache_dir: Path | None = None) -> Path:
    """The guest kernel's .deb, downloaded into the cache when apt's cache does not have it."""
    cache_dir = cache_dir or default_cache_dir()
    package, version = kernel_package(cache_dir)
    with _locked(cache_dir):
        return _find_deb(package, version, cache_dir / "debs")


def _deb_tree(package: str, version: str | None, cache_dir: Path) -> KernelTree:
    """Unpack the kernel package once into the cache and index its modules with `depmod -b`."""
    kversion = package.removeprefix("linux-image-").removesuffix("-unsigned")
    with _locked(cache_dir):
        deb = _find_deb(package, version, cache_dir / "debs")
        target = cache_dir / deb.name.removesuffix(".deb")
        if not (target / ".complete").is_file():
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


def find_kernel(cache_dir: Path | None = None, source: KernelSource | None = None) -> KernelTree:
    """The kernel to put into the image: unpacked from its package ("deb", the default), the installed
    one ("host"), or the installed one if that exact version is readable, else the package ("auto")."""
    source = source or default_source()
    cache_dir = cache_dir or default_cache_dir()
    package, version = kernel_package(cache_dir)
    kversion = package.removeprefix("linux-image-").removesuffix("-unsigned")
    if source in ("auto", "host"):
        tree = _host_tree(kversion)
        if tree is not None:
            return tree
        if source == "host":
            raise ImageToolError(f"kernel {kversion} is not installed readable in /boot and /lib/modules")
    return _deb_tree(package, version, cache_dir)


def main(argv: list[str] | None = None) -> int:
    """`python -m strato.image.kernel [CACHE_DIR]`: fetch and unpack the guest kernel (scripts/setup.sh)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        tree = find_kernel(Path(args[0]) if args else None, "deb")
    except ImageToolError as exc:
        print(f"guest kernel: {exc}", file=sys.stderr)
        return 1
    print(f"guest kernel {tree.version}: {tree.vmlinuz}")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
