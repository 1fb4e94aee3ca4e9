"""Start a real agent (uvicorn) as a subprocess on a free loopback port, and stop it by pid.

Used by agent, protocol and (later) server tests that need an agent speaking real HTTP.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from strato.protocol.client import AgentClient, AgentUnreachable


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cli_has_agent() -> bool:
    """Whether `strato agent` is wired into the CLI yet (else run_agent is called directly)."""
    try:
        from strato.cli.main import app
    except Exception:
        return False
    names = {info.name or (info.callback.__name__ if info.callback else "") for info in app.registered_commands}
    return "agent" in names or "agent_command" in names


@dataclass
class AgentProcess:
    """A running agent subprocess; `client()` gives an AgentClient for it."""

    data_dir: Path
    token: str
    port: int
    driver: str
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    clients: list[AgentClient] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = None, timeout: float = 10.0, path: str = "") -> AgentClient:
        client = AgentClient(self.base_url + path, token if token is not None else self.token, timeout=timeout)
        self.clients.append(client)
        return client

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the agent gets no chance to clean up (a crash)."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (orderly shutdown), SIGKILL if it does not exit in time; closes the clients."""
        for client in self.clients:
            client.close()
        self.clients.clear()
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()


def agent_argv(data_dir: Path, listen: str, driver: str, token: str, accel: str) -> list[str]:
    if _cli_has_agent():
        return [
            sys.executable, "-m", "strato.cli.main", "agent",
            "--data-dir", str(data_dir), "--listen", listen, "--driver", driver, "--accel", accel,
        ]  # fmt: skip
    code = (
        "import os, sys; from pathlib import Path; from strato.agent.service import run_agent\n"
        "a = sys.argv; t = os.environ['STRATO_AGENT_TOKEN']\n"
        "run_agent(Path(a[1]), a[2], a[3], t, a[4])"
    )
    return [sys.executable, "-c", code, str(data_dir), listen, driver, accel]


def start_agent(
    data_dir: Path,
    token: str = "test-token",
    driver: str = "simulator",
    accel: str = "tcg",
    port: int | None = None,
    timeout: float = 30.0,
    argv: list[str] | None = None,
    health_path: str = "",
    health_token: str | None = None,
) -> AgentProcess:
    """Start an agent and wait until /v1/health answers; raises with its stderr if it dies or hangs.

    `argv` replaces the command line (e.g. a simulator fleet; `{listen}` in it is replaced), with
    `health_path`/`health_token` saying which agent of it to wait for; the token goes in
    STRATO_AGENT_TOKEN."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port if port is not None else free_port()
    listen = f"127.0.0.1:{port}"
    stderr_path = data_dir / f"agent-stderr-{port}.log"
    env = {**os.environ, "STRATO_AGENT_TOKEN": token}
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [a.replace("{listen}", listen) for a in argv]
            if argv is not None
            else agent_argv(data_dir, listen, driver, token, accel),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            start_new_session=True,
        )
    agent = AgentProcess(data_dir, token, port, driver, proc, stderr_path)
    try:
        _wait_healthy(agent, timeout, health_path, health_token or token)
    except BaseException:
        agent.stop()
        raise
    return agent


def _wait_healthy(agent: AgentProcess, timeout: float, health_path: str, token: str) -> None:
    deadline = time.monotonic() + timeout
    with AgentClient(agent.base_url + health_path, token, timeout=2.0) as client:
        while True:
            if not agent.alive():
                raise RuntimeError(f"agent exited with {agent.proc.returncode}:\n{agent.stderr()[-3000:]}")
            try:
                client.health()
                return
            except AgentUnreachable:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent not healthy after {timeout}s:\n{agent.stderr()[-3000:]}")
            time.sleep(0.1)
