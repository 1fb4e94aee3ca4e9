"""The `strato` command: server, agent, API client, image tools and the one-machine `up`."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="Strato: storage-centric cloud management for KVM/QEMU.")


def _register_subcommands() -> None:
    """Each area of the CLI lives in its own module and adds itself here."""
    from strato.cli import agent, api, image, server, up

    app.command("server")(server.server_command)
    app.command("up")(up.up_command)
    app.command("login")(api.login_command)
    app.command("api")(api.api_command)
    app.command("agent")(agent.agent_command)
    app.add_typer(image.image_app, name="image")


_register_subcommands()

if __name__ == "__main__":
    app()
