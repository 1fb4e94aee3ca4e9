"""Helpers of the compute tests: the shared environment (a server, two QEMU hosts under TCG, four pools,
two image stores, the tiny template), API calls that follow async jobs, the guest's serial console, and
what is on each pool's directory."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cs import CloudStack, CloudStackApiException

from helpers.agentproc import AgentProcess
from helpers.console import whole_lines
from helpers.serverproc import ServerProcess, wait_job
from strato.protocol.client import AgentClient
from strato.protocol.messages import GetConsoleLog, GetVmStats

T = TypeVar("T")
MIB = 1024**2
GIB = 1024**3
BOOT_TIMEOUT = 90.0


@dataclass
class Env:
    """Everything the compute tests share (one per session)."""

    base: Path
    server: ServerProcess
    agents: dict[str, AgentProcess]  # "host1", "host2"
    api: CloudStack  # the root admin; async commands are followed to their end (fetch_result)
    zoneid: str
    podid: str
    clusterid: str
    hosts: dict[str, dict[str, Any]]  # "host1", "host2" -> listHosts item
    pools: dict[str, dict[str, Any]]  # "local1", "local2", "shared1", "shared2" -> listStoragePools item
    stores: dict[str, dict[str, Any]]  # "store1", "store2" -> addImageStore item plus "path"
    offering: dict[str, Any]  # 1 CPU, 128 MiB
    big_offering: dict[str, Any]  # 1 CPU, 192 MiB (scale target)
    disk_offering: dict[str, Any]  # 1 GiB, shared
    tiny_image: Path  # a copy of the tiny guest image in the test's directory
    template: dict[str, Any]  # the tiny template, registered on store1
    raw: CloudStack  # the root admin without following jobs (async commands answer jobid)
    clients: list[AgentClient] = field(default_factory=list)

    # --- API --------------------------------------------------------------------------------------

    def call(self, command: str, **params: Any) -> Any:
        return getattr(self.api, command)(**params)

    def job(self, jobid: str, timeout: float = 180.0) -> dict[str, Any]:
        """Waits for an async job's end; the whole queryAsyncJobResult answer."""
        return wait_job(self.raw, jobid, timeout)

    def client_for(self, keys: Any) -> CloudStack:
        return self.server.cs(keys, fetch_result=True, job_timeout=180)

    def vm(self, vm_id: str, api: CloudStack | None = None) -> dict[str, Any]:
        found = (api or self.api).listVirtualMachines(id=vm_id, listall=True).get("virtualmachine", [])
        assert len(found) == 1, found
        return dict(found[0])

    def volumes(self, vm_id: str) -> list[dict[str, Any]]:
        vols = self.api.listVolumes(virtualmachineid=vm_id, listall=True).get("volume", [])
        return sorted(vols, key=lambda v: v["deviceid"])

    def volume(self, volume_id: str) -> dict[str, Any]:
        found = self.api.listVolumes(id=volume_id, listall=True).get("volume", [])
        assert len(found) == 1, found
        return dict(found[0])

    def template_info(self, template_id: str) -> dict[str, Any]:
        found = self.api.listTemplates(templatefilter="all", id=template_id).get("template", [])
        assert len(found) == 1, found
        return dict(found[0])

    def deploy(self, name: str, **params: Any) -> dict[str, Any]:
        params.setdefault("zoneid", self.zoneid)
        params.setdefault("serviceofferingid", self.offering["id"])
        params.setdefault("templateid", self.template["id"])
        return dict(self.api.deployVirtualMachine(name=name, **params)["virtualmachine"])

    def destroy(self, vm_id: str) -> None:
        """Expunges a VM (stopping it first) and deletes its detached data disks; for cleanups."""
        with contextlib.suppress(CloudStackApiException):
            vols = self.volumes(vm_id)
            self.api.destroyVirtualMachine(id=vm_id, expunge=True)
            for vol in vols:
                if vol["type"] == "DATADISK":
                    self.delete_volume(vol["id"])

    def delete_volume(self, volume_id: str) -> None:
        """deleteVolume answers success at once and removes the files in a job: wait until it is gone."""
        self.api.deleteVolume(id=volume_id)
        wait_until(
            lambda: self.api.listVolumes(id=volume_id, listall=True).get("volume", []),
            lambda found: found == [],
            30,
            f"volume {volume_id} deleted",
        )

    def cached_template_files(self) -> set[tuple[str, str]]:
        """(pool key, path) of every template copy cached on a pool, as the templates' locations say."""
        out: set[tuple[str, str]] = set()
        for key, pool in self.pools.items():
            for path in pool_files(Path(pool["path"])):
                if not path.startswith("templates/"):
                    continue
                tid = path.removeprefix("templates/").removesuffix(".qcow2")
                found = self.api.listTemplates(templatefilter="all", id=tid).get("template", [])
                if any(
                    loc["type"] == "storagepool" and loc["id"] == pool["id"] for t in found for loc in t["locations"]
                ):
                    out.add((key, path))
        return out

    def stray_view(self) -> dict[str, set[str]]:
        """all_files() without the cached template copies that the templates' locations account for."""
        cached = self.cached_template_files()
        return {k: {f for f in files if (k, f) not in cached} for k, files in self.all_files().items()}

    def pool_by_id(self, pool_id: str) -> dict[str, Any]:
        return next(p for p in self.pools.values() if p["id"] == pool_id)

    # --- agents and guests -------------------------------------------------------------------------

    def host_key(self, host_id: str) -> str:
        return next(k for k, h in self.hosts.items() if h["id"] == host_id)

    def agent_client(self, host_id: str) -> AgentClient:
        client = self.agents[self.host_key(host_id)].client(timeout=30)
        self.clients.append(client)
        return client

    def console(self, vm: dict[str, Any]) -> str:
        host_id = vm.get("hostid") or self.vm(vm["id"]).get("hostid")
        assert host_id, f"VM {vm['name']} has no host"
        answer = self.agent_client(host_id).call(GetConsoleLog(name=vm["instancename"], tail_bytes=None))
        return whole_lines(str(answer.text))  # the guest may be mid-line: hand over complete lines only

    def wait_console(self, vm: dict[str, Any], marker: str, timeout: float = BOOT_TIMEOUT) -> str:
        return wait_until(lambda: self.console(vm), lambda text: marker in text, timeout, f"{marker} on {vm['name']}")

    def boot_disks(self, vm: dict[str, Any], timeout: float = BOOT_TIMEOUT) -> dict[str, int]:
        """Waits for the guest's STRATO-DISKS line; returns its virtio disks (vda, vdb...) with sizes."""
        text = self.wait_console(vm, "STRATO-DISKS:", timeout)
        return disks_line(text)

    def wait_boots(self, vm: dict[str, Any], count: int, timeout: float = BOOT_TIMEOUT) -> dict[str, int]:
        """Waits for the guest's `count`-th STRATO-DISKS line (one per boot, reboots included)."""
        text = wait_until(
            lambda: self.console(vm),
            lambda t: len(DISKS_RE.findall(t)) >= count,
            timeout,
            f"boot {count} of {vm['name']}",
        )
        return disks_line(text)

    def block_devices(self, vm: dict[str, Any]) -> set[int]:
        """The device ids of the disks QEMU has (query-blockstats through the agent's GetVmStats)."""
        stats = self.agent_client(vm["hostid"]).call(GetVmStats(name=vm["instancename"]))
        return {d.device_id for d in stats.disks if d.device_id is not None}

    # --- files -------------------------------------------------------------------------------------

    def all_files(self) -> dict[str, set[str]]:
        """Every file on every pool and store, by pool/store key (paths relative to its directory)."""
        out = {k: pool_files(Path(p["path"])) for k, p in self.pools.items()}
        out.update({k: pool_files(Path(s["path"])) for k, s in self.stores.items()})
        return out

    def assert_on_pool(self, vol: dict[str, Any], pool_key: str) -> Path:
        """The volume is on the pool (storageid) and its top layer's file is in the pool's directory."""
        pool = self.pools[pool_key]
        assert vol["storageid"] == pool["id"], f"{vol['name']} on {vol.get('storage')}, expected {pool['name']}"
        path = Path(vol["path"])
        assert path.is_file(), f"{path} of {vol['name']} does not exist"
        assert path.resolve().is_relative_to(Path(pool["path"]).resolve()), f"{path} not under {pool['path']}"
        return path


def wait_until(fetch: Callable[[], T], ok: Callable[[T], bool], timeout: float, what: str, interval: float = 0.3) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            shown = value if not isinstance(value, str) else value[-2000:]
            raise AssertionError(f"{what}: not reached after {timeout}s; last: {shown!r}")
        time.sleep(interval)


DISKS_RE = re.compile(r"STRATO-DISKS:(.*)")


def disks_line(text: str) -> dict[str, int]:
    """The virtio disks of the last STRATO-DISKS line: {"vda": 67108864, ...} (CD drives left out)."""
    lines = DISKS_RE.findall(text)
    assert lines, text[-2000:]
    out: dict[str, int] = {}
    for item in lines[-1].split():
        name, _, size = item.partition(":")
        if name.startswith("vd"):
            out[name] = int(size)
    return out


def pool_files(root: Path) -> set[str]:
    if not root.is_dir():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "lost+found"}


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def qemu_io_write(path: Path | str, fmt: str, offset: int, length: int, pattern: int = 0x5A) -> None:
    """Writes real data (not zeros) into an image, so that copies of it cost what its size says."""
    subprocess.run(
        ["qemu-io", "-f", fmt, "-c", f"write -P {pattern} {offset} {length}", str(path)],
        check=True,
        capture_output=True,
    )


def qemu_img_info(path: Path | str) -> dict[str, Any]:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return dict(json.loads(out))


def api_error(fn: Callable[[], Any]) -> tuple[int, str]:
    """Runs a call that must fail; returns (errorcode, errortext) from the answer or the failed job."""
    try:
        fn()
    except CloudStackApiException as exc:
        err = exc.error if isinstance(exc.error, dict) else {}
        return int(err.get("errorcode", 0)), str(err.get("errortext", err))
    raise AssertionError("the call succeeded; an error was expected")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append((int(entry.name), cmdline))
    return found


def kill_qemus(base: Path) -> list[int]:
    """SIGKILLs the QEMU processes started under `base` (by pid); returns their pids."""
    killed = []
    for pid, cmdline in processes_mentioning(str(base)):
        if "qemu-system" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def states_settled(env: Env) -> Iterator[str]:
    """Names of VMs and volumes still in a transitional state (should be none once jobs ended)."""
    for vm in env.api.listVirtualMachines(listall=True).get("virtualmachine", []):
        if vm["state"] in ("Starting", "Stopping", "Migrating", "Expunging"):
            yield f"VM {vm['name']} {vm['state']}"
    for vol in env.api.listVolumes(listall=True).get("volume", []):
        if vol["state"] in ("Allocated", "Creating", "Migrating", "Snapshotting", "Resizing"):
            yield f"volume {vol['name']} {vol['state']}"
