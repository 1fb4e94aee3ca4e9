"""Start a real agent (uvicorn) as a subprocess on a free loopback port, and stop it by pid.

Used by agent, protocol and (later) server tests that need an agent speaking real HTTP.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from strato.protocol.client import AgentClient, AgentUnreachable


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port nobody listens on right now, picked at random below the kernel's ephemeral range.

    Tests run in parallel (pytest-xdist, and other sessions on the machine): a port from bind(0) lies in
    the range the kernel also gives to outgoing connections, so between this call and the server's own
    bind (or a server's restart on the same port) a client socket could take it. Random picks below
    that range only meet another test's pick, rarely; start_server/start_agent retry on that."""
    low = max(1025, min(_ephemeral_low(), 32768) - 12000)
    high = min(_ephemeral_low(), 32768) - 1
    for _ in range(200):
        port = random.randint(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` (or a child of it) holds the listening socket on 127.0.0.1:`port`, so a
    health check is known to have reached our process and not another test's that took the port."""
    inodes: set[str] = set()
    # The process's own view of the tables: the right one also when it runs in another network namespace.
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[1].endswith(f":{port:04X}"):
                inodes.add(f"socket:[{fields[9]}]")
    pids = [pid, *_children(pid)]
    for candidate in pids:
        try:
            fds = list(Path(f"/proc/{candidate}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    return True
            except OSError:
                continue
    return False


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def port_taken(stderr: str) -> bool:
    """The process died because its port was taken meanwhile (retry on another one)."""
    return "address already in use" in stderr.lower() or "errno 98" in stderr.lower()


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
    listen_host: str = "127.0.0.1"
    test_url: str | None = None
    """How the test reaches the agent when that is not its own address (a relay into a namespace)."""

    @property
    def base_url(self) -> str:
        """The URL the test talks to."""
        return self.test_url or self.url

    @property
    def url(self) -> str:
        """The agent's own address (what the server is told in addHost)."""
        return f"http://{self.listen_host}:{self.port}"

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
    command_prefix: list[str] | None = None,
    listen_host: str = "127.0.0.1",
    test_url_for: Callable[[int], str] | None = None,
) -> AgentProcess:
    """Start an agent and wait until /v1/health answers; raises with its stderr if it dies or hangs.

    `argv` replaces the command line (e.g. a simulator fleet; `{listen}` in it is replaced), with
    `health_path`/`health_token` saying which agent of it to wait for; the token goes in
    STRATO_AGENT_TOKEN. `command_prefix` runs it under another command (`ip netns exec NS`), listening
    on `listen_host`; `test_url_for(port)` then gives the URL the test reaches it by."""
    net = Placement(command_prefix or [], listen_host, test_url_for)
    for attempt in range(3):
        try:
            return _start_agent(data_dir, token, driver, accel, port, timeout, argv, health_path, health_token, net)
        except PortTaken:
            if port is not None or attempt == 2:
                raise
    raise AssertionError("unreachable")


@dataclass
class Placement:
    """Where a child process runs and listens (a namespace's command prefix and address)."""

    prefix: list[str]
    host: str
    test_url_for: Callable[[int], str] | None


class PortTaken(RuntimeError):
    """The child could not bind its port: another process took it between free_port() and its bind."""


def _start_agent(
    data_dir: Path,
    token: str,
    driver: str,
    accel: str,
    port: int | None,
    timeout: float,
    argv: list[str] | None,
    health_path: str,
    health_token: str | None,
    net: Placement,
) -> AgentProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port if port is not None else free_port()
    listen = f"{net.host}:{port}"
    stderr_path = data_dir / f"agent-stderr-{port}.log"
    env = {**os.environ, "STRATO_AGENT_TOKEN": token}
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            net.prefix
            + (
                [a.replace("{listen}", listen) for a in argv]
                if argv is not None
                else agent_argv(data_dir, listen, driver, token, accel)
            ),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            start_new_session=True,
        )
    test_url = net.test_url_for(port) if net.test_url_for is not None else None
    agent = AgentProcess(data_dir, token, port, driver, proc, stderr_path, listen_host=net.host, test_url=test_url)
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
                error = PortTaken if port_taken(agent.stderr()) else RuntimeError
                raise error(f"agent exited with {agent.proc.returncode}:\n{agent.stderr()[-3000:]}")
            try:
                client.health()
                if listens_on(agent.proc.pid, agent.port):
                    return
            except AgentUnreachable:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent not healthy after {timeout}s:\n{agent.stderr()[-3000:]}")
            time.sleep(0.1)
