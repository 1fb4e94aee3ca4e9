"""`strato login` and `strato api COMMAND key=value ...`: call any API command, follow async jobs with a
progress bar, print tables or JSON. Command help comes from the server's listApis."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from strato.cli.apiclient import ApiError, Profile, StratoApi, login_for_keys

console = Console()
err_console = Console(stderr=True)

TABLE_COLUMNS = (
    "id",
    "name",
    "state",
    "status",
    "zonename",
    "type",
    "scope",
    "path",
    "hypervisor",
    "account",
)


def login_command(
    url: str = typer.Option("http://127.0.0.1:8080", "--url", help="The server's URL"),
    username: str = typer.Option("admin", "--username", "-u"),
    password: str = typer.Option(..., "--password", "-p", prompt=True, hide_input=True),
    domain: str = typer.Option("/", "--domain", help="Path of the user's domain"),
) -> None:
    """Log in once with a password; the user's API keys are stored for later `strato api` calls."""
    try:
        profile = login_for_keys(url, username, password, domain)
    except ApiError as exc:
        err_console.print(f"[red]login failed[/red] ({exc.code}): {exc.text}")
        raise typer.Exit(1) from None
    path = profile.save()
    console.print(f"Logged in to {url} as {username}; keys stored in {path}")


def _client() -> StratoApi:
    profile = Profile.load()
    if profile is None:
        err_console.print("No credentials: run `strato login` or set STRATO_URL, STRATO_API_KEY and STRATO_SECRET_KEY")
        raise typer.Exit(2)
    return StratoApi(profile.url, profile.apikey, profile.secretkey)


def _parse_pairs(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got '{pair}'")
        out[key] = value
    return out


def _show_help(api: StratoApi, command: str) -> None:
    found = api.call("listApis", name=command).get("api", [])
    if not found:
        err_console.print(f"Unknown command {command}")
        raise typer.Exit(2)
    spec = found[0]
    console.print(f"[bold]{spec['name']}[/bold]{' (async)' if spec['isasync'] else ''}: {spec['description']}")
    table = Table("parameter", "type", "required", "description")
    for p in sorted(spec["params"], key=lambda p: (not p["required"], p["name"])):
        table.add_row(p["name"], p["type"], "yes" if p["required"] else "", p["description"])
    console.print(table)


def _follow(api: StratoApi, job_id: str) -> dict[str, Any]:
    """A bar for the job as it runs: a percentage, or, for a move (a job listing the parts of its
    progress: each disk, the RAM), bytes done / total for the whole job and one bar per part, with the
    job's phase in words."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[amount]}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as progress:
        task = progress.add_task(f"job {job_id[:8]}", total=100, amount="")
        parts: dict[str, TaskID] = {}

        def update(job: dict[str, Any]) -> None:
            title = f"{job.get('cmd', 'job')} {job_id[:8]}"
            phase = job.get("jobprogressphase")
            done, total = int(job.get("jobprogressdone") or 0), int(job.get("jobprogresstotal") or 0)
            listed = job.get("jobprogressparts") or []
            if listed and total:  # a move: bytes
                progress.update(task, total=total, completed=done, amount=_bytes(done, total),
                                description=f"{title}: {phase}" if phase else title)  # fmt: skip
                for part in listed:
                    key = str(part.get("volumeid") or part.get("virtualmachineid") or part.get("name"))
                    if key not in parts:
                        parts[key] = progress.add_task(f"  {part.get('name', key)}", total=part["total"], amount="")
                    progress.update(parts[key], total=part["total"], completed=part["done"],
                                    amount=_bytes(part["done"], part["total"]))  # fmt: skip
                return
            progress.update(task, completed=int(job.get("jobprogress", 0)), description=title)

        job = api.wait_job(job_id, update)
        if job.get("jobstatus") == 1:
            update(job)
            done_total = progress.tasks[0].total or 100
            progress.update(task, completed=done_total)
        else:
            progress.stop_task(task)
    return job


def _bytes(done: int, total: int) -> str:
    """e.g. 12.0/64.0 MiB"""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if total >= size:
            return f"{done / size:.1f}/{total / size:.1f} {unit}"
    return f"{done}/{total} B"


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(result))
        return
    lists = [(k, v) for k, v in result.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
    if lists:
        name, items = lists[0]
        columns = [c for c in TABLE_COLUMNS if any(c in item for item in items)] or list(items[0])[:6]
        table = Table(*columns, title=f"{name} ({result.get('count', len(items))})")
        for item in items:
            table.add_row(*(str(item.get(c, "")) for c in columns))
        console.print(table)
        return
    console.print_json(json.dumps(result))


def api_command(
    command: str = typer.Argument(..., help="API command, e.g. listZones"),
    params: list[str] = typer.Argument(None, help="Parameters as key=value"),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON result"),
    no_wait: bool = typer.Option(False, "--no-wait", help="Do not follow async jobs; print the job id"),
    show_help: bool = typer.Option(False, "--describe", help="Show the command's parameters (from listApis)"),
) -> None:
    """Call an API command as the stored user; async commands are followed with a progress bar."""
    api = _client()
    try:
        if show_help:
            _show_help(api, command)
            return
        result = api.call(command, **_parse_pairs(params or []))
        if "jobid" in result and not no_wait:
            job = _follow(api, result["jobid"])
            if job.get("jobstatus") != 1:
                jr = job.get("jobresult", {})
                err_console.print(f"[red]job failed[/red] ({jr.get('errorcode')}): {jr.get('errortext')}")
                raise typer.Exit(1)
            result = job.get("jobresult", {})
        _print(result, as_json)
    except ApiError as exc:
        err_console.print(f"[red]error {exc.code}[/red]: {exc.text}")
        raise typer.Exit(1) from None
