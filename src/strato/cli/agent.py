"""`strato agent`: run the agent of one hypervisor host (or a simulated one)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer


class DriverName(StrEnum):
    QEMU = "qemu"
    SIMULATOR = "simulator"


class AccelName(StrEnum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


def agent_command(
    data_dir: Path = typer.Option(..., "--data-dir", help="Where the agent keeps its state and logs."),
    listen: str = typer.Option("127.0.0.1:8250", "--listen", help="HOST:PORT to serve the agent protocol on."),
    driver: DriverName = typer.Option(DriverName.QEMU, "--driver", help="qemu (real VMs) or simulator."),
    token: str = typer.Option(
        ..., "--token", envvar="STRATO_AGENT_TOKEN", help="Bearer token the server must present."
    ),
    accel: AccelName = typer.Option(AccelName.AUTO, "--accel", help="QEMU accelerator: auto, kvm or tcg."),
) -> None:
    """Run the agent in the foreground until interrupted; stopping it never stops running VMs."""
    from strato.agent.service import parse_listen, run_agent

    try:
        parse_listen(listen)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--listen") from exc
    run_agent(data_dir, listen, DriverName(driver).value, token, AccelName(accel).value)
