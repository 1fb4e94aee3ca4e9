"""`strato api` following a storage move: the bar shows bytes done / total while the move runs, a bar
per disk (and the RAM of a VM migration), and the job's phase in words; a job without parts keeps its
percentage bar. Against a real server and simulator agent (the storage-motion tests' cloud); the rich
console is forced to a terminal so its live frames are what a user's terminal would get."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from strato.protocol.messages import ConfigureSimulator

_TESTS = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cli_clouds", _TESTS / "faults" / "conftest.py")
assert _spec is not None and _spec.loader is not None
clouds = importlib.util.module_from_spec(_spec)
sys.modules["cli_clouds"] = clouds
_spec.loader.exec_module(clouds)
simcloud = clouds.simcloud

Cloud = Any


def _strato(cloud: Cloud, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    keys = cloud.server.admin_keys()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATO_")}
    env.update(STRATO_CLI_CONFIG=str(tmp_path / "cli.json"), STRATO_URL=cloud.server.base_url,
               STRATO_API_KEY=keys.apikey, STRATO_SECRET_KEY=keys.secretkey, COLUMNS="200", NO_COLOR="1",
               FORCE_COLOR="1", TTY_COMPATIBLE="1", TERM="xterm")  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join([str(_TESTS.parent / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "strato.cli.main", "api", *args], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_migrate_volume_shows_bytes_per_disk_and_the_phase(simcloud: Cloud, tmp_path: Path) -> None:
    api, ids = simcloud.api(), simcloud.ids
    vm = simcloud.ok(api.deployVirtualMachine(zoneid=ids["zone"], serviceofferingid=ids["offering"],
                                              templateid=ids["template"], name=simcloud.name("cli")),
                     timeout=120)["virtualmachine"]  # fmt: skip
    vol = simcloud.ok(api.createVolume(name=simcloud.name("clivol"), zoneid=ids["zone"], diskofferingid=ids["disk"],
                                       storageid=ids["local"], virtualmachineid=vm["id"]))["volume"]  # fmt: skip
    simcloud.agent.client().call(ConfigureSimulator(command="mirror_disk", delay_s=3.0))
    try:
        run = _strato(simcloud, tmp_path, "migrateVolume", f"volumeid={vol['id']}", f"storageid={ids['shared']}",
                      "--json")  # fmt: skip
    finally:
        simcloud.agent.client().call(ConfigureSimulator(command="mirror_disk", delay_s=0.0))
    assert run.returncode == 0, run.stderr
    moved = api.listVolumes(id=vol["id"])["volume"][0]
    assert moved["storageid"] == ids["shared"], moved
    bar = run.stderr
    assert "migrateVolume" in bar and vol["name"] in bar, bar  # the job's bar and the disk's own
    assert "mirroring disk" in bar, bar  # the agent's phase, live
    assert " MiB" in bar or " KiB" in bar, bar  # bytes, not only a percentage
    assert "100%" in bar, bar


def test_a_job_without_parts_keeps_its_percentage_bar(simcloud: Cloud, tmp_path: Path) -> None:
    ids = simcloud.ids
    run = _strato(simcloud, tmp_path, "createVolume", f"name={simcloud.name('plain')}", f"zoneid={ids['zone']}",
                  f"diskofferingid={ids['disk']}", f"storageid={ids['local']}", "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "createVolume" in run.stderr and "100%" in run.stderr, run.stderr
    assert "MiB" not in run.stderr, run.stderr
