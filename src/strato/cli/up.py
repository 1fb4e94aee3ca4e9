"""`strato up`: the embedded default for one machine.

Starts the management server (SQLite), two QEMU agents (two hosts on loopback, each with its local pool)
and a shared pool both hosts mount, registers them in a default zone/pod/cluster, and prints the URL and
the admin's API keys. Everything stays in the foreground until Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import typer
from rich.console import Console

from strato.cli.apiclient import ApiError, StratoApi, login_for_keys
from strato.cli.server import default_home
from strato.image.accel_probe import probe_accel, read_cache
from strato.image.tiny import build_tiny_image, default_image_path
from strato.image.tools import ImageToolError

console = Console()


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]


def _spawn(name: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> Child:
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "strato.cli.main", *args],
        stdout=out,
        stderr=out,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    return Child(name, proc)


def _wait_http(url: str, child: Child, timeout: float = 60.0, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with code {child.proc.returncode}; see its log")
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{child.name} did not answer on {url} within {timeout}s")


def _token(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path.write_text(token)
    path.chmod(0o600)
    return token


def _first(result: dict[str, object], key: str) -> dict[str, str] | None:
    items = result.get(key)
    return items[0] if isinstance(items, list) and items else None


def ensure_topology(api: StratoApi, agents: list[tuple[str, str]], shared_path: Path) -> None:
    """Default zone, pod and cluster; the agents as hosts; one shared pool. Idempotent."""
    zone = _first(api.call("listZones"), "zone") or api.call("createZone", name="zone1")["zone"]
    pod = (
        _first(api.call("listPods", zoneid=zone["id"]), "pod")
        or api.call("createPod", name="pod1", zoneid=zone["id"])["pod"]
    )
    cluster = _first(api.call("listClusters", podid=pod["id"]), "cluster") or _first(
        api.call("addCluster", clustername="cluster1", zoneid=zone["id"], podid=pod["id"], hypervisor="KVM"),
        "cluster",
    )
    assert cluster is not None
    known = {h["url"] for h in api.call("listHosts").get("host", [])}
    for url, token in agents:
        if url not in known:
            api.call(
                "addHost",
                zoneid=zone["id"],
                podid=pod["id"],
                clusterid=cluster["id"],
                url=url,
                username="strato",
                password=token,
                hypervisor="KVM",
            )
    pools = api.call("listStoragePools", clusterid=cluster["id"], scope="cluster").get("storagepool", [])
    if not pools:
        api.call(
            "createStoragePool",
            name="shared1",
            zoneid=zone["id"],
            clusterid=cluster["id"],
            scope="cluster",
            url=f"SharedMountPoint://localhost{shared_path}",
        )


DEFAULT_TEMPLATE = "tiny"


def ensure_starter_kit(api: StratoApi, home: Path) -> str | None:
    """An image store, the tiny guest as the default (public, featured) template, and a small service
    and disk offering, so that a VM can be deployed right after start. Idempotent; returns the
    template's id (None when the image is missing)."""
    zone = _first(api.call("listZones"), "zone")
    assert zone is not None
    if not api.call("listImageStores", zoneid=zone["id"]).get("imagestore"):
        store = home / "image-store"
        store.mkdir(parents=True, exist_ok=True)
        api.call("addImageStore", name="images1", url=f"file://localhost{store}", provider="NFS", zoneid=zone["id"])
    if not api.call("listServiceOfferings", name="tiny").get("serviceoffering"):
        api.call(
            "createServiceOffering",
            name="tiny",
            displaytext="1 vCPU, 128 MiB",
            cpunumber="1",
            cpuspeed="1000",
            memory="128",
        )
    if not api.call("listDiskOfferings", name="small").get("diskoffering"):
        api.call("createDiskOffering", name="small", displaytext="1 GiB data disk", disksize="1")
    existing = _first(api.call("listTemplates", templatefilter="featured", name=DEFAULT_TEMPLATE), "template")
    if existing is not None:
        return existing["id"]
    image = default_image_path()
    if not image.is_file():
        return None
    registered = api.call(
        "registerTemplate",
        name=DEFAULT_TEMPLATE,
        displaytext="Strato tiny guest (busybox)",
        url=f"file://{image}",
        format="QCOW2",
        hypervisor="KVM",
        zoneid=zone["id"],
        ispublic="true",
        isfeatured="true",
        ostypeid="Other Linux (64-bit)",
    )
    template = _first(registered, "template")
    assert template is not None
    api.wait_job(template["jobid"])
    return template["id"]


def resolve_accel(accel: str, home: Path) -> str:
    """`auto` becomes what really boots a guest here (probed once, cached in DATA_DIR/accel)."""
    if accel != "auto":
        if accel not in ("kvm", "tcg"):
            raise typer.BadParameter(f"--accel must be auto, kvm or tcg, not {accel}")
        return accel
    cache = home / "accel"
    cached = read_cache(cache)
    if cached is not None:
        console.print(f"Accelerator: {cached} (probed earlier; delete {cache} to probe again)")
        return cached
    image = default_image_path()
    if not image.is_file():
        with console.status("Building the tiny guest image (used to probe KVM)...") as status:
            try:
                build_tiny_image(image, progress=lambda msg: status.update(f"Tiny guest image: {msg}"))
            except (ImageToolError, OSError) as exc:
                console.print(f"[yellow]Could not build the tiny guest image ({exc}); using tcg[/yellow]")
                return "tcg"
    with console.status("Probing whether a guest boots under KVM..."):
        chosen = probe_accel(image, cache=cache)
    why = "a guest boots under KVM" if chosen == "kvm" else "KVM is unusable or a guest does not boot under it"
    console.print(f"Accelerator: {chosen} ({why}; cached in {cache})")
    return chosen


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def up_command(
    data_dir: Path = typer.Option(None, "--data-dir", help="Where everything is kept (default ~/.local/share/strato)"),
    port: int = typer.Option(8080, "--port", help="Port of the API"),
    accel: str = typer.Option(
        os.environ.get("STRATO_ACCEL", "auto"),
        "--accel",
        help="QEMU accelerator of the local hosts: auto, kvm or tcg",
    ),
    admin_password: str = typer.Option("password", "--admin-password", envvar="STRATO_ADMIN_PASSWORD"),
    exit_after_setup: bool = typer.Option(
        False, "--exit-after-setup", help="Stop everything once it is set up (for smoke tests)"
    ),
) -> None:
    """Run Strato on this machine: server, two local QEMU hosts, a shared pool."""
    home = (data_dir or default_home()).resolve()
    shared = home / "shared-pool"
    shared.mkdir(parents=True, exist_ok=True)
    accel = resolve_accel(accel, home)
    url = f"http://127.0.0.1:{port}"
    children = [
        _spawn(
            "server",
            ["server", "--data-dir", str(home / "server"), "--listen", f"127.0.0.1:{port}"],
            home / "logs" / "server.out",
            {"STRATO_ADMIN_PASSWORD": admin_password},
        )
    ]
    agents: list[tuple[str, str]] = []
    for n in (1, 2):
        token = _token(home / "agents" / f"host{n}.token")
        listen = f"127.0.0.1:{port + 170 + n}"
        children.append(
            _spawn(
                f"agent{n}",
                [
                    "agent",
                    "--data-dir",
                    str(home / "agents" / f"host{n}"),
                    "--listen",
                    listen,
                    "--driver",
                    "qemu",
                    "--accel",
                    accel,
                ],
                home / "logs" / f"agent{n}.out",
                {"STRATO_AGENT_TOKEN": token},
            )
        )
        agents.append((f"http://{listen}", token))

    def stop_all(*_: object) -> None:
        for child in reversed(children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.proc.kill()

    try:
        with console.status("Starting the server and two local hosts..."):
            _wait_http(f"{url}/healthz", children[0])
            for child, (agent_url, token) in zip(children[1:], agents, strict=True):
                _wait_http(f"{agent_url}/v1/health", child, headers={"Authorization": f"Bearer {token}"})
            profile = login_for_keys(url, "admin", admin_password)
            profile.save()
            api = StratoApi(profile.url, profile.apikey, profile.secretkey)
            ensure_topology(api, agents, shared)
            template_id = ensure_starter_kit(api, home)
    except (RuntimeError, ApiError, httpx.HTTPError) as exc:
        console.print(f"[red]Strato did not start:[/red] {exc}\nLogs are in {home / 'logs'}")
        stop_all()
        raise typer.Exit(1) from None
    console.print(f"[bold green]Strato is up[/bold green] at {url}/client/api")
    console.print(f"  admin API key:    {profile.apikey}\n  admin secret key: {profile.secretkey}", soft_wrap=True)
    console.print(f"  data: {home}   logs: {home / 'logs'}")
    if template_id:
        console.print(
            f"  default template: {DEFAULT_TEMPLATE} ({template_id}); service offering tiny, disk offering small"
        )
        console.print(
            f"  deploy a VM: strato api deployVirtualMachine zoneid=... serviceofferingid=... templateid={template_id}"
        )
    console.print("  try: strato api listHosts   (Ctrl-C stops the server and agents; VMs keep running)")
    if exit_after_setup:
        stop_all()
        return
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        while all(c.proc.poll() is None for c in children):
            time.sleep(1)
        dead = [c.name for c in children if c.proc.poll() is not None]
        console.print(f"[red]{', '.join(dead)} stopped[/red]; stopping the rest")
    except KeyboardInterrupt:
        console.print("Stopping...")
    finally:
        stop_all()
