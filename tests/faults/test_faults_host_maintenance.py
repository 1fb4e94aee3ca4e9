"""prepareHostForMaintenance and cancelHostMaintenance stopped after each step, then recovered: both go
on to the end (each step is safe to repeat), so the host ends in Maintenance, then Enabled again."""

from __future__ import annotations

from conftest import FaultCloud
from helpers.faultlib import Promises, run_fault_matrix


def _host_state(cloud: FaultCloud) -> str:
    [host] = cloud.api().listHosts(id=cloud.ids["host"])["host"]
    return str(host["resourcestate"])


def test_maintenance_on_the_simulator(simcloud: FaultCloud) -> None:
    api = simcloud.api()

    def start() -> str:
        return str(api.prepareHostForMaintenance(id=simcloud.ids["host"])["jobid"])

    def check(_step: str, found: Promises) -> None:
        assert found.job["jobstatus"] == 1, found.job
        assert _host_state(simcloud) == "Maintenance"
        simcloud.ok(api.cancelHostMaintenance(id=simcloud.ids["host"]))
        assert _host_state(simcloud) == "Enabled"

    names = run_fault_matrix(simcloud.server, api, simcloud.fault_file, "host.maintenance", start,
                             simcloud.files, after_each=check)  # fmt: skip
    assert names == ["refuse new work", "plan moves", "move vms", "check running vms", "set maintenance"], names


def test_cancel_maintenance_on_the_simulator(simcloud: FaultCloud) -> None:
    api = simcloud.api()

    def start() -> str:
        simcloud.ok(api.prepareHostForMaintenance(id=simcloud.ids["host"]))
        return str(api.cancelHostMaintenance(id=simcloud.ids["host"])["jobid"])

    def check(_step: str, found: Promises) -> None:
        assert found.job["jobstatus"] == 1, found.job
        assert _host_state(simcloud) == "Enabled"

    names = run_fault_matrix(simcloud.server, api, simcloud.fault_file, "host.cancelmaintenance", start,
                             simcloud.files, after_each=check)  # fmt: skip
    assert names == ["enable"], names
