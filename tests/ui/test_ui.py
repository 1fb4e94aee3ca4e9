"""The web UI in a real browser (headless Chromium): log in, deploy with a pool per disk, see the disks on
their pools, move a disk watching its progress bar, an API error where the user acted, the console."""

from __future__ import annotations

import time
from typing import Any

import pytest

from conftest import UiCloud
from helpers.serverproc import wait_job
from strato.protocol.messages import ConfigureSimulator


def _login(page: Any, password: str = "password", hash_: str = "#/vms") -> None:
    page.goto(f"/client/{hash_}")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", password)
    page.fill("input[name=domain]", "/")
    page.press("input[name=password]", "Enter")


def test_login_errors_and_expiry(page: Any, uicloud: UiCloud) -> None:
    _login(page, password="wrong")
    assert "Failed to authenticate user admin" in page.locator(".error").inner_text()
    page.fill("input[name=password]", "password")
    page.press("input[name=password]", "Enter")
    page.wait_for_selector("text=Virtual machines")
    assert page.locator("header .who").inner_text().startswith("admin")
    # A session the server no longer knows: the next call returns to the login form, saying why.
    page.evaluate("""() => { const s = JSON.parse(sessionStorage.getItem('strato.session'));
        s.sessionkey = 'gone'; sessionStorage.setItem('strato.session', JSON.stringify(s)); }""")
    page.goto("/client/#/pools")
    page.wait_for_selector("form.login .notice")
    assert page.locator("button.logout").count() == 0


def _bar_values(page: Any) -> list[int]:
    return [
        int(v)
        for v in page.eval_on_selector_all(
            ".job [role=progressbar]", "els => els.map(e => e.getAttribute('aria-valuenow'))"
        )
    ]


def test_deploy_pools_move_and_errors(page: Any, uicloud: UiCloud) -> None:
    shared1, shared2 = uicloud.pools["shared1"], uicloud.pools["shared2"]
    _login(page, hash_="#/deploy")
    page.wait_for_selector(
        f"form.deploy select[name=templateid] option[value='{uicloud.sim_template}']", state="attached"
    )
    page.fill("form.deploy input[name=name]", "ui-vm")
    page.select_option("select[name=zoneid]", uicloud.zoneid)
    page.select_option("select[name=templateid]", uicloud.sim_template)
    page.select_option("select[name=serviceofferingid]", uicloud.offering)
    page.select_option("select[name=rootpool]", shared1["id"])
    page.click("button.add-disk")
    page.select_option("select[name=dataoffering-0]", uicloud.disk_offering)
    page.select_option("select[name=datapool-0]", shared2["id"])
    page.click("form.deploy button[type=submit]")
    page.wait_for_selector("table.disks tbody tr:nth-child(2)", timeout=60000)
    rows = page.locator("table.disks tbody tr")
    assert "ROOT" in rows.nth(0).inner_text() and rows.nth(0).locator(".pool").inner_text() == shared1["name"]
    assert "DATADISK" in rows.nth(1).inner_text() and rows.nth(1).locator(".pool").inner_text() == shared2["name"]
    data_disk = rows.nth(1).locator("td").first.inner_text()
    vm_url = page.url

    # The data disk's pool lists it, with its VM.
    rows.nth(1).locator(".pool a").click()
    page.wait_for_selector(f"table[data-list=listVolumes] >> text={data_disk}")
    assert "ui-vm" in page.locator("table[data-list=listVolumes]").inner_text()

    # A live move of the root disk to shared2, slowed down so that the bar is seen moving to its end.
    sim = uicloud.sim.client()
    for command in ("mirror_disk", "copy_layer"):
        sim.call(ConfigureSimulator(command=command, delay_s=2.0))
    try:
        page.goto(vm_url)
        page.locator("table.disks tbody tr").nth(0).locator("text=Move disk…").click()
        page.check(f"form.move input[value='{shared2['id']}']")
        page.click("form.move button[type=submit]")
        seen: set[int] = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen.update(_bar_values(page))
            if page.locator("form.move .job[data-status=succeeded]").count():
                break
            time.sleep(0.1)
        assert page.locator("form.move .job[data-status=succeeded]").count() == 1
        assert 100 in _bar_values(page)
        assert any(0 < v < 100 for v in seen), seen  # seen in between, not only at the end
    finally:
        for command in ("mirror_disk", "copy_layer"):
            sim.call(ConfigureSimulator(command=command, delay_s=0.0))
    page.wait_for_function(
        f"() => document.querySelector('table.disks tbody tr .pool').innerText === {shared2['name']!r}"
    )

    # The task log lists the move as done, with its bar full.
    page.click("header >> text=Tasks")
    row = page.wait_for_selector("table[data-list=listAsyncJobs] tbody tr:has-text('succeeded')")
    assert row.query_selector("[role=progressbar]").get_attribute("aria-valuenow") == "100"
    page.goto(vm_url)
    page.wait_for_selector("table.disks tbody tr")

    # Starting a running VM: the API's refusal is shown next to the buttons.
    page.click("div.actions >> text=Start")
    error = page.wait_for_selector("div.actions ~ .error")
    assert "Error 5" in error.inner_text() or "Error 4" in error.inner_text()
    assert "Running" in error.inner_text()

    # VM snapshots as a tree: s1, then s2 under it (current); a disk revert of the running VM is refused
    # with the API's reason; stopped, the revert to s1 makes s1 current; deleting s2 leaves s1 alone.
    def take(name: str) -> None:
        page.fill("form.take-snapshot input[name=snapshotname]", name)
        page.click("form.take-snapshot button[type=submit]")
        page.wait_for_selector(f".snapshot-tree li.current > .snapname:text-is('{name}')", timeout=30000)

    take("s1")
    take("s2")
    assert page.locator(".snapshot-tree li.snapshot li.snapshot > .snapname").inner_text() == "s2"  # a child of s1
    s1 = page.locator(".snapshot-tree li.snapshot").first
    s1.locator("> button.revert").click()
    refused = page.wait_for_selector(".snapshots .error")
    assert "Error 431" in refused.inner_text(), refused.inner_text()
    page.click("div.actions >> text=Stop")
    page.wait_for_function("() => document.querySelector('.vmstate').innerText === 'Stopped'", timeout=30000)
    page.locator(".snapshot-tree li.snapshot").first.locator("> button.revert").click()
    page.wait_for_selector(".snapshot-tree li.current > .snapname:text-is('s1')", timeout=30000)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(".snapshot-tree li.snapshot li.snapshot").first.locator("> button.delete").click()
    page.wait_for_function("() => document.querySelectorAll('.snapshot-tree li.snapshot').length === 1", timeout=30000)


def test_console_canvas_draws(page: Any, uicloud: UiCloud) -> None:
    if not uicloud.console_vm:
        pytest.skip("qemu-system-x86_64 is needed for the console")
    job = wait_job(uicloud.raw, uicloud.console_job, timeout=120)
    assert job["jobstatus"] == 1, job.get("jobresult")
    logs: list[str] = []
    page.on("console", lambda msg: logs.append(msg.text))
    _login(page, hash_=f"#/console/{uicloud.console_vm}")
    try:
        page.wait_for_selector(".console-status:text-is('connected')")
    except Exception as exc:
        raise AssertionError(f"{page.locator('main').inner_text()} {logs}") from exc
    lit = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not lit:
        lit = page.evaluate("""() => { const c = document.querySelector('#console-screen canvas');
            if (!c || !c.width) return 0; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] || d[i + 1] || d[i + 2]) n++; return n; }""")
        time.sleep(0.3)
    assert lit > 0, "the console canvas stayed blank"


def test_static_files_served(uicloud: UiCloud) -> None:
    """/client/ serves the page and every module its import map names, from the package (no Node)."""
    import re

    import httpx

    base = uicloud.server.base_url
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/client", follow_redirects=False).headers["location"] == "/client/"
        index = http.get("/client/")
        assert index.status_code == 200 and "importmap" in index.text
        for target in [*re.findall(r'"\./([^"]+\.js)"', index.text), "js/app.js", "ui.css"]:
            assert http.get(f"/client/{target}").status_code == 200, target
        assert http.get("/client/api", params={"command": "listZones", "response": "json"}).status_code == 401
