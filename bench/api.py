"""API throughput: signed listZones and a paginated listAccounts over 10,000 rows, with concurrent
clients, as a ratio to a bare endpoint of the same framework (Starlette on uvicorn) measured in the same
run on the same machine.

    .venv/bin/python bench/api.py [--seconds 8] [--clients 8] [--rows 10000] [--database-url URL]

Starts its own management server (SQLite in a temp dir unless --database-url) and the bare app, both as
subprocesses on loopback, and stops them by pid at the end. Runs in well under two minutes.
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

from helpers.agentproc import free_port  # noqa: E402
from helpers.serverproc import Keys, ServerProcess, start_server  # noqa: E402

BARE_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def api(request):
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
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < stop:
                url = make_url()
                t0 = time.perf_counter()
                resp = client.get(url)
                mine.append(time.perf_counter() - t0)
                if resp.status_code == 200 and check(resp):
                    ok += 1
                else:
                    err += 1
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


def start_bare(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE_APP, str(port)],
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each measurement")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--rows", type=int, default=10_000, help="accounts to page through")
    parser.add_argument("--pagesize", type=int, default=50)
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL (default: SQLite in a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="strato-bench-") as tmp:
        bare = start_bare(free_port())
        server: ServerProcess | None = None
        try:
            server = start_server(Path(tmp) / "server", database_url=args.database_url)
            keys = server.admin_keys()
            t0 = time.monotonic()
            server.insert_accounts(args.rows, prefix="bench")
            print(
                f"inserted {args.rows} accounts in {time.monotonic() - t0:.1f}s; "
                f"{args.clients} clients, {args.seconds:.0f}s per measurement\n"
            )
            bare_url = f"http://127.0.0.1:{bare.args[-1]}/client/api?command=listZones&response=json"  # type: ignore[index]
            pages = max(1, args.rows // args.pagesize)

            def list_zones() -> str:
                return signed_url(server.endpoint, keys, {"command": "listZones"})  # type: ignore[union-attr]

            def list_accounts() -> str:
                page = str(random.randint(1, pages))
                params = {"command": "listAccounts", "page": page, "pagesize": str(args.pagesize)}
                return signed_url(server.endpoint, keys, params)  # type: ignore[union-attr]

            def full_page(resp: httpx.Response) -> bool:
                body = resp.json()["listaccountsresponse"]
                return body["count"] > args.rows and len(body["account"]) == args.pagesize

            results = [
                measure("bare Starlette endpoint", lambda: bare_url, lambda r: True, args.clients, args.seconds),
                measure(
                    "signed listZones",
                    list_zones,
                    lambda r: "listzonesresponse" in r.json(),
                    args.clients,
                    args.seconds,
                ),
                measure(
                    f"signed listAccounts page/pagesize={args.pagesize} of {args.rows}",
                    list_accounts,
                    full_page,
                    args.clients,
                    args.seconds,
                ),
            ]
        finally:
            if server is not None:
                server.stop()
            stop_proc(bare)

    base = results[0].rps
    print(f"{'request':<48} {'req/s':>9} {'ratio':>7} {'p50 ms':>8} {'p95 ms':>8} {'errors':>7}")
    for r in results:
        print(
            f"{r.name:<48} {r.rps:>9.0f} {r.rps / base:>7.3f} {r.percentile(0.5):>8.1f} "
            f"{r.percentile(0.95):>8.1f} {r.errors:>7}"
        )


if __name__ == "__main__":
    main()
