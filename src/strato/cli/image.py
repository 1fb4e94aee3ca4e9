"""`strato image ...`: guest image tools."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

image_app = typer.Typer(no_args_is_help=True, help="Guest image tools.")
console = Console()


@image_app.command("build-tiny")
def build_tiny(
    dest: Path = typer.Argument(None, help="Output qcow2 (default: $STRATO_IMAGE_DIR/tiny.qcow2)."),
    size_mib: int = typer.Option(64, "--size-mib", min=16, help="Virtual disk size in MiB."),
) -> None:
    """Build the tiny test guest (Debian kernel + busybox) as a bootable qcow2."""
    from strato.image.tiny import build_tiny_image, default_image_path
    from strato.image.tools import ImageToolError

    target = dest or default_image_path()
    started = time.monotonic()
    last: list[str] = []
    with console.status("building tiny image", spinner="dots") as status:

        def step(message: str) -> None:
            if last:
                console.print(f"[green]✓[/green] {last[-1]}")
            last.append(message)
            status.update(message)

        try:
            build_tiny_image(target, size_mib=size_mib, progress=step)
        except ImageToolError as exc:
            console.print(f"[red]✗[/red] {last[-1] if last else 'build'}: {exc}")
            raise typer.Exit(1) from exc
    console.print(f"[green]✓[/green] {target} ({time.monotonic() - started:.1f}s)")


@image_app.command("config-drive")
def config_drive(
    dest: Path = typer.Argument(..., help="Output ISO file."),
    hostname: str = typer.Option(..., "--hostname", help="Guest hostname."),
    user_data_file: Path = typer.Option(None, "--user-data-file", exists=True, dir_okay=False),
    key: list[str] = typer.Option([], "--key", help="SSH public key (repeatable)."),
) -> None:
    """Build a config-2 ISO (OpenStack + CloudStack layout) for the tiny guest or cloud-init."""
    from strato.image.configdrive import build_config_drive
    from strato.image.tools import ImageToolError

    user_data = user_data_file.read_text() if user_data_file else None
    try:
        build_config_drive(dest, hostname=hostname, user_data=user_data, public_keys=key)
    except ImageToolError as exc:
        console.print(f"[red]✗[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"[green]✓[/green] {dest}")
