"""`strato up` end to end (server + two QEMU agents under TCG + a shared pool), its idempotence on the same
data dir, that it leaves no process behind, and `strato api` against it (tables, --json, async jobs,
errors). STRATO_CLI_CONFIG points into the test's temp dir: the user's own config is never touched."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

UP_TIMEOUT = 180.0


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_up_port() -> int:
    """A port P with P, P+171 and P+172 free (`strato up` puts its two agents there)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port + 172 < 65536 and all(port_is_free(p) for p in (port + 171, port + 172)):
            return port
    raise RuntimeError("no free port triple found")


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


def kill_leftovers(home: Path) -> None:
    for pid, _ in processes_mentioning(str(home)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cli_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATO_")}
    env.update(STRATO_CLI_CONFIG=str(tmp / "cli.json"), COLUMNS="250", NO_COLOR="1", TERM="dumb")
    return env


def strato(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "strato.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def db_rows(home: Path, query: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(home / "server" / "strato.db", timeout=30)
    try:
        return list(conn.execute(query).fetchall())
    finally:
        conn.close()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """The data dir of `strato up`; whatever still runs from it at the end is killed (and fails the test)."""
    data = tmp_path / "strato-home"
    yield data
    left = processes_mentioning(str(data))
    kill_leftovers(data)
    assert left == [], f"processes left running: {left}"


def test_up_exit_after_setup_is_idempotent(home: Path, tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    port = free_up_port()
    argv = ["up", "--data-dir", str(home), "--port", str(port), "--exit-after-setup"]
    first = strato([*argv, "--accel", "tcg"], env, UP_TIMEOUT)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Strato is up" in first.stdout
    assert processes_mentioning(str(home)) == []

    hosts = db_rows(home, "SELECT hypervisor, status, url FROM hosts WHERE removed IS NULL ORDER BY url")
    assert [(h[0], h[1]) for h in hosts] == [("KVM", "Up"), ("KVM", "Up")]
    assert [h[2] for h in hosts] == [f"http://127.0.0.1:{port + 171}", f"http://127.0.0.1:{port + 172}"]
    pools = db_rows(home, "SELECT scope, path FROM storage_pools WHERE removed IS NULL ORDER BY scope, path")
    assert [p[0] for p in pools] == ["CLUSTER", "HOST", "HOST"]
    assert pools[0][1] == str((home / "shared-pool").resolve())
    profile = json.loads((tmp_path / "cli.json").read_text())
    assert profile["url"] == f"http://127.0.0.1:{port}" and profile["apikey"]

    # Again on the same data dir, with --accel auto answered by the cached probe: nothing is added.
    (home / "accel").write_text("tcg\n")
    second = strato([*argv, "--accel", "auto"], env, UP_TIMEOUT)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Accelerator: tcg" in second.stdout
    assert len(db_rows(home, "SELECT id FROM hosts WHERE removed IS NULL")) == 2
    assert len(db_rows(home, "SELECT id FROM storage_pools WHERE removed IS NULL")) == 3
    assert len(db_rows(home, "SELECT id FROM zones WHERE removed IS NULL")) == 1
    assert processes_mentioning(str(home)) == []


def test_up_then_strato_api(home: Path, tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    port = free_up_port()
    log = tmp_path / "up.out"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "strato.cli.main", "up", "--data-dir", str(home), "--port", str(port),
             "--accel", "tcg"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + UP_TIMEOUT
        while "Strato is up" not in log.read_text(errors="replace"):
            assert up.poll() is None, f"strato up exited {up.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"strato up not ready:\n{log.read_text()}"
            time.sleep(0.3)

        # --json prints the JSON answer; without it, a list call prints a table.
        listed = strato(["api", "listHosts", "--json"], env)
        assert listed.returncode == 0, listed.stderr
        hosts = json.loads(listed.stdout)["host"]
        assert len(hosts) == 2
        assert {(h["state"], h["hypervisor"]) for h in hosts} == {("Up", "KVM")}
        table = strato(["api", "listHosts"], env)
        assert table.returncode == 0, table.stderr
        assert "host (2)" in table.stdout
        for h in hosts:
            row = next(line for line in table.stdout.splitlines() if h["id"] in line)
            assert h["name"] in row and "Up" in row and "KVM" in row, table.stdout
        pools = json.loads(strato(["api", "listStoragePools", "--json"], env).stdout)["storagepool"]
        assert sorted(p["scope"] for p in pools) == ["CLUSTER", "HOST", "HOST"]
        assert all(p["disksizetotal"] > 0 for p in pools)

        # createAccount answers at once; deleteAccount is an async job the CLI follows to its end.
        name = f"cli-{uuid.uuid4().hex[:8]}"
        created = strato(
            ["api", "createAccount", f"username={name}", "password=pw-123456", "firstname=A", "lastname=B",
             f"email={name}@example.org", "accounttype=0", "--json"],
            env,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        account_id = json.loads(created.stdout)["account"]["id"]
        deleted = strato(["api", "deleteAccount", f"id={account_id}", "--json"], env)
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr
        assert json.loads(deleted.stdout).get("success") in (True, "true")
        left = json.loads(strato(["api", "listAccounts", f"name={name}", "--json"], env).stdout)
        assert left.get("account", []) == []

        # The tiny guest is the default template: a newcomer deploys from it right away.
        featured = json.loads(strato(["api", "listTemplates", "templatefilter=featured", "--json"], env).stdout)
        tiny = [t for t in featured.get("template", []) if t["name"] == "tiny"]
        assert len(tiny) == 1 and tiny[0]["isready"] is True, featured
        zone = json.loads(strato(["api", "listZones", "--json"], env).stdout)["zone"][0]
        offering = json.loads(strato(["api", "listServiceOfferings", "name=tiny", "--json"], env).stdout)
        deployed = strato(
            ["api", "deployVirtualMachine", f"zoneid={zone['id']}", f"templateid={tiny[0]['id']}",
             f"serviceofferingid={offering['serviceoffering'][0]['id']}", "startvm=false", "--json"],
            env,
        )  # fmt: skip
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        vm = json.loads(deployed.stdout)["virtualmachine"]
        assert vm["state"] == "Stopped" and vm["templatename"] == "tiny"
        expunged = strato(["api", "destroyVirtualMachine", f"id={vm['id']}", "expunge=true", "--json"], env)
        assert expunged.returncode == 0, expunged.stdout + expunged.stderr

        # A bad parameter: non-zero exit and CloudStack's error code and text.
        bad = strato(["api", "listHosts", "id=not-a-uuid"], env)
        assert bad.returncode == 1
        assert "error 431" in bad.stderr and "id" in bad.stderr, bad.stderr
        unknown = strato(["api", "listHosts", "noequals"], env)
        assert unknown.returncode != 0
    finally:
        if up.poll() is None:
            os.kill(up.pid, signal.SIGTERM)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(timeout=10)
    deadline = time.monotonic() + 20
    while processes_mentioning(str(home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_mentioning(str(home)) == []
