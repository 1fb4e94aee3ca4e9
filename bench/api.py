"""API throughput as a ratio to a bare endpoint of the same framework (Starlette on uvicorn) measured in
the same run on the same machine:

- signed listZones against a bare endpoint answering {"listzonesresponse": {}}, at 8 and at 4 clients
  (goal: >= 0.5);
- listAccounts, listVirtualMachines and listVolumes with 500 rows on a page, against a bare endpoint
  returning the very same JSON bytes (fetched from the server first) (goal: >= 0.25);
- a paginated listAccounts over --accounts more accounts (pages of 50), against the bare listZones.

Both sides of a pair are checked alike and cheaply (the status and the bytes: the page's exact bytes for
the 500-row lists), so that the client's own work, parsing 600 KB of JSON, is not charged to one side.

    .venv/bin/python bench/api.py [--seconds 5] [--clients 8] [--rows 500] [--postgres | --database-url URL]

Starts its own management server (SQLite in a temp dir; --postgres: a throw-away PostgreSQL from
tests/helpers/postgres.py) and the bare app, as subprocesses on loopback, and stops them by pid at the
end. The rows are written straight into the database (tests/helpers/bulk.py): each account, VM and
volume with its own domain, user, host, template, tags, pool and layer chain. Runs in about two minutes.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import postgres  # noqa: E402
from helpers.agentproc import free_port  # noqa: E402
from helpers.bulk import seed_cloud  # noqa: E402
from helpers.serverproc import Keys, start_server  # noqa: E402

# The bare app: listZones answers an empty list; any other command answers the bytes in the file
# named <dir>/<command>.json (the server's own answer, fetched first), as the same media type.
BARE_APP = """
import sys, uvicorn
from pathlib import Path
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

bodies = {p.stem: p.read_bytes() for p in Path(sys.argv[2]).glob("*.json")}

async def api(request):
    command = request.query_params.get("command", "")
    if command in bodies:
        return Response(bodies[command], media_type="application/json; charset=UTF-8")
    return JSONResponse({"listzonesresponse": {}})

app = Starlette(routes=[Route("/client/api", api)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def signed_url(endpoint: str, keys: Keys, params: dict[str, str]) -> str:
    """Signs as the `cs` client does (signatureVersion 3, expires, case-sensitive sort)."""
    expires = (datetime.now(UTC) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S%z")
    full = {**params, "apiKey": keys.apikey, "response": "json", "signatureVersion": "3", "expires": expires}
    canonical = "&".join(f"{k}={quote(v, safe='*')}" for k, v in sorted(full.items())).lower()
    sig = base64.b64encode(hmac.new(keys.secretkey.encode(), canonical.encode(), hashlib.sha1).digest()).decode()
    return f"{endpoint}?{urlencode({**full, 'signature': sig})}"


@dataclass
class Result:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else 0.0


def measure(
    name: str, make_url: Callable[[], str], check: Callable[[httpx.Response], bool], clients: int, seconds: float
) -> Result:
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    counts = {"ok": 0, "err": 0}
    latencies: list[float] = []

    def worker() -> None:
        mine: list[float] = []
        ok = err = 0
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < stop:
                url = make_url()
                t0 = time.perf_counter()
                try:
                    resp = client.get(url)
                    good = resp.status_code == 200 and check(resp)
                except httpx.HTTPError:
                    good = False
                mine.append(time.perf_counter() - t0)
                ok, err = (ok + 1, err) if good else (ok, err + 1)
        with lock:
            counts["ok"] += ok
            counts["err"] += err
            latencies.extend(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Result(name, counts["ok"], counts["err"], time.monotonic() - started, latencies)


def start_bare(port: int, bodies: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE_APP, str(port), str(bodies)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/client/api", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("bare Starlette app did not start")


def stop_proc(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


PAGE_LISTS = (
    ("listAccounts", "account", {"listall": "true"}),
    ("listVirtualMachines", "virtualmachine", {"listall": "true"}),
    ("listVolumes", "volume", {"listall": "true"}),
)


@dataclass
class Pair:
    """A server measurement and its bare baseline, with the goal of their ratio."""

    bare: Result
    server: Result
    goal: float

    @property
    def ratio(self) -> float:
        return self.server.rps / self.bare.rps if self.bare.rps else 0.0


def run(args: argparse.Namespace, tmp: Path, database_url: str | None) -> list[Pair]:
    server = start_server(tmp / "server", database_url=database_url)
    bare: subprocess.Popen[bytes] | None = None
    try:
        keys = server.admin_keys()
        t0 = time.monotonic()
        seed_cloud(server, args.rows)
        server.insert_accounts(args.accounts, prefix="bench")
        # The seeded hosts answer nothing: out of the monitor's rounds (the VMs still name them).
        server.sql("UPDATE hosts SET removed = created")
        print(f"seeded {args.rows} of each kind and {args.accounts} more accounts in {time.monotonic() - t0:.1f}s")
        bodies = tmp / "bodies"
        bodies.mkdir()
        for command, item, extra in PAGE_LISTS:
            params = {"command": command, "page": "1", "pagesize": str(args.rows), **extra}
            resp = httpx.get(signed_url(server.endpoint, keys, params), timeout=120)
            assert len(resp.json()[command.lower() + "response"][item]) == args.rows, resp.text[:300]
            (bodies / f"{command}.json").write_bytes(resp.content)
            print(f"  {command} page of {args.rows}: {len(resp.content) / 1024:.0f} KiB")
        bare = start_bare(free_port(), bodies)
        bare_base = f"http://127.0.0.1:{bare.args[-2]}/client/api"  # type: ignore[index]
        print(f"{args.clients} clients (and 4), {args.seconds:.0f}s per measurement\n")

        def zones() -> str:
            return signed_url(server.endpoint, keys, {"command": "listZones", "id": ZONE_NONE})

        pairs: list[Pair] = []
        for clients in (args.clients, 4):
            pairs.append(
                Pair(
                    measure(f"bare endpoint, {clients} clients", lambda: f"{bare_base}?command=listZones",
                            zones_check, clients, args.seconds),
                    measure(f"signed listZones, {clients} clients", zones, zones_check, clients, args.seconds),
                    0.5,
                )
            )  # fmt: skip
        for command, _item, extra in PAGE_LISTS:
            params = {"command": command, "page": "1", "pagesize": str(args.rows), **extra}
            same = same_bytes((bodies / f"{command}.json").read_bytes())
            pairs.append(
                Pair(
                    measure(f"bare, same bytes as {command}", lambda c=command: f"{bare_base}?command={c}",
                            same, args.clients, args.seconds),
                    measure(f"signed {command} {args.rows}/page", lambda p=params: signed_url(server.endpoint, keys, p),
                            same, args.clients, args.seconds),
                    0.25,
                )
            )  # fmt: skip
        pages = max(1, args.accounts // 50)

        def accounts_page() -> str:
            params = {"command": "listAccounts", "page": str(random.randint(1, pages)), "pagesize": "50"}
            return signed_url(server.endpoint, keys, params)

        pairs.append(
            Pair(
                pairs[0].bare,
                measure(f"signed listAccounts 50/page of {args.accounts + args.rows}", accounts_page,
                        lambda r: len(r.json()["listaccountsresponse"]["account"]) == 50, args.clients, args.seconds),
                0.0,
            )
        )  # fmt: skip
        return pairs
    finally:
        server.stop()
        if bare is not None:
            stop_proc(bare)


ZONE_NONE = "00000000-0000-0000-0000-000000000000"


def zones_check(resp: httpx.Response) -> bool:
    return b"listzonesresponse" in resp.content


def same_bytes(expected: bytes) -> Callable[[httpx.Response], bool]:
    return lambda resp: resp.content == expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--rows", type=int, default=500, help="rows of each kind, and the page size of the lists")
    parser.add_argument("--accounts", type=int, default=2000, help="more accounts to page through 50 at a time")
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument("--postgres", action="store_true", help="on a throw-away PostgreSQL server")
    args = parser.parse_args()

    pg: postgres.PostgresServer | None = None
    with tempfile.TemporaryDirectory(prefix="strato-bench-") as tmp:
        try:
            url = args.database_url
            if args.postgres and url is None:
                pg = postgres.start_postgres()
                url = pg.create_database("bench")
            backend = "PostgreSQL" if url else "SQLite"
            pairs = run(args, Path(tmp), url)
        finally:
            if pg is not None:
                pg.stop()

    head = f"{'request':<44} {'req/s':>8} {'bare':>8} {'ratio':>7} {'goal':>6} {'p50 ms':>8} {'p95 ms':>8} {'err':>4}"
    print(f"{backend}: {head}")
    for p in pairs:
        r = p.server
        goal = f">={p.goal}" if p.goal else ""
        mark = "" if not p.goal else (" ok" if p.ratio >= p.goal else " MISSED")
        print(
            f"{'':{len(backend) + 2}}{r.name:<44} {r.rps:>8.1f} {p.bare.rps:>8.1f} {p.ratio:>7.3f} {goal:>6} "
            f"{r.percentile(0.5):>8.1f} {r.percentile(0.95):>8.1f} {r.errors:>4}{mark}"
        )


if __name__ == "__main__":
    main()
