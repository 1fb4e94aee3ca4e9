"""API fuzzing from the API's own declarations (the registry): Hypothesis strategies that build
requests for every declared command with missing, repeated, over-long, non-UTF-8, wrong-typed and
boundary parameters, sent as GET or POST, signed, unsigned or badly signed, and the checks every answer
must pass (no server error, CloudStack's error envelope, the database unchanged by a refused request).

Shared by tests/api/test_fuzz.py (short, deterministic) and scripts/fuzz_api.py (long, random seed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_from_bytes

import httpx
from hypothesis import strategies as st

from helpers.serverproc import Keys
from strato.api.params import Param, T
from strato.api.registry import COMMANDS, Command, Kind
from strato.server.registrations import load_registrations

load_registrations()

# Rows the server changes by itself or for every request, refused or not: audit events, jobs, the
# servers' heartbeats, login sessions (a login attempt may touch them), and columns the host monitor
# and VM sync refresh.
VOLATILE_TABLES = frozenset({"events", "jobs", "job_resources", "server_nodes", "login_sessions"})
VOLATILE_COLUMNS = {
    "hosts": {"last_ping", "last_seen", "updated", "capacity_used", "cpu_used", "memory_used", "state_since"},
    "storage_pools": {"used_bytes", "capacity_bytes", "updated", "allocated_bytes", "available_bytes"},
    "users": {"login_attempts"},  # a failed login counts, by design
    "virtual_machines": {"last_seen", "updated"},
}

MAP_SUBKEYS = ("key", "value", "name", "volume", "pool", "diskofferingid", "deviceid", "size", "disk", "id")
ALLOWED_ERROR_CODES = frozenset({401, 405, 429, 430, 431, 432, 531, 532, 533, 534, 535, 536, 537})


@dataclass
class World:
    """What the fuzzer aims at: the server, a key pair, the ids that exist, its database (a SQLite file
    or a PostgreSQL URL)."""

    endpoint: str
    keys: Keys
    ids: list[str]
    database: Path | str
    commands: list[str] = field(default_factory=lambda: sorted(c.name for c in COMMANDS.values()))
    session: dict[str, str] | None = None
    """A logged-in session's cookies (JSESSIONID, sessionkey): requests then also go as the UI sends them."""
    kinds: dict[str, list[str]] = field(default_factory=dict)
    """Known ids by kind (zone, offering, template, disk_offering, vm, volume, pod, cluster, pool, host):
    well-formed requests name the right kind of id for a parameter, so that some jobs start and succeed."""


@dataclass
class FuzzRequest:
    """One generated request, printable so that a failing one can be replayed by hand."""

    command: str | None
    pairs: list[tuple[str, str]]
    method: str
    auth: str  # signed | unsigned | badsig | expired | unknownkey | session | badsession
    raw_suffix: bytes = b""  # bytes appended to the query/body as they are (non-UTF-8)

    def __repr__(self) -> str:
        shown = [(k, v if len(v) <= 80 else f"{v[:40]}...({len(v)} chars)") for k, v in self.pairs]
        return f"FuzzRequest({self.method} {self.auth} command={self.command!r} pairs={shown} raw={self.raw_suffix!r})"


# --- values -----------------------------------------------------------------------------------------

INT_EDGES = ["0", "1", "-1", str(2**31 - 1), str(2**31), str(-(2**31)), str(-(2**31) - 1), str(2**63 - 1),
             str(2**63), str(-(2**63)), str(10**40), "1.5", "1e3", " 7", "0x10", "abc", "", "+5", "٣"]  # fmt: skip
STRING_EDGES = ["", "x", "a" * 300, "a" * 5000, "é漢字🙂", "\x00", "nul\x00in", "%", "%%00", "' OR 1=1--",
                "line\nbreak", "<script>", "../../etc/passwd", "  spaces  ", "\ud800".encode("utf-8", "surrogatepass")
                .decode("utf-8", "replace")]  # fmt: skip
BOOL_EDGES = ["true", "false", "TRUE", "yes", "1", "", "null"]
DATE_EDGES = ["2026-11-22", "2026-13-45", "garbage", "2026-11-22T10:00:00+0000", "0000-00-00", "9999-12-31 23:59:59"]
UUID_EDGES = [
    "not-a-uuid", "", "1", "00000000-0000-0000-0000-000000000000", "{6f0b5c1e-3d2a-4b8e-9c7f-1a2b3c4d5e6f}",
    "6F0B5C1E-3D2A-4B8E-9C7F-1A2B3C4D5E6F", "6f0b5c1e3d2a4b8e9c7f1a2b3c4d5e6f", "6f0b5c1e-3d2a-4b8e-9c7f",
]  # fmt: skip


def any_text(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=max_size)


def uuid_values(ids: list[str]) -> st.SearchStrategy[str]:
    known = st.sampled_from(ids) if ids else st.nothing()
    return st.one_of(known, known, st.uuids().map(str), st.sampled_from(UUID_EDGES), any_text(20))


def scalar_values(typ: T, ids: list[str]) -> st.SearchStrategy[str]:
    if typ == T.UUID:
        return uuid_values(ids)
    if typ in (T.INTEGER, T.LONG, T.SHORT):
        return st.one_of(st.sampled_from(INT_EDGES), st.integers(-(2**64), 2**64).map(str), any_text(8))
    if typ == T.BOOLEAN:
        return st.one_of(st.sampled_from(BOOL_EDGES), any_text(6))
    if typ == T.DATE:
        return st.one_of(st.sampled_from(DATE_EDGES), any_text(25))
    return st.one_of(st.sampled_from(STRING_EDGES), any_text(), st.sampled_from(ids) if ids else st.nothing())


def plausible(p: Param, ids: list[str]) -> st.SearchStrategy[str]:
    """A value a client would send: a known id, a small number, true/false, one of the choices, a name."""
    typ = p.item_type if p.type == T.LIST else p.type
    if p.choices:
        return st.sampled_from(p.choices)
    if typ == T.UUID:
        return st.sampled_from(ids) if ids else st.uuids().map(str)
    if typ in (T.INTEGER, T.LONG, T.SHORT):
        return st.integers(-1, 64).map(str)
    if typ == T.BOOLEAN:
        return st.sampled_from(["true", "false"])
    if typ == T.DATE:
        return st.sampled_from(["2026-11-22", "2026-11-22T10:00:00+0000"])
    return st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


def param_values(p: Param, ids: list[str]) -> st.SearchStrategy[str]:
    base = scalar_values(p.item_type if p.type == T.LIST else p.type, ids)
    if p.choices:
        base = st.one_of(st.sampled_from([c.upper() for c in p.choices]), base)
    if p.type == T.LIST:
        base = st.lists(base, max_size=4).map(",".join) | base
    good = plausible(p, ids)
    return st.one_of(good, good, base)


@st.composite
def map_pairs(draw: st.DrawFn, p: Param, ids: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.sampled_from(["0", "1", "2", "9999", "-1", "x", "", "00001", "99999"]))
        sub = draw(st.sampled_from([*MAP_SUBKEYS, "", "Key", "a.b", "k[0]"]))
        shape = draw(st.sampled_from(["{n}[{i}].{s}", "{n}[{i}].{s}", "{n}[{i}]", "{n}.{s}", "{n}[{i}.{s}", "{n}[]"]))
        value = draw(st.one_of(uuid_values(ids), st.sampled_from(STRING_EDGES), any_text(12)))
        out.append((shape.format(n=p.name, i=index, s=sub), value))
    return out


def _known_or_random_command(world: World) -> st.SearchStrategy[str | None]:
    name = st.sampled_from(world.commands)
    return st.one_of(
        name, name, name, name, name, name, name, name, name, name,
        name.map(str.lower), name.map(str.upper),
        st.sampled_from(["", "frobnicate", "list", "login", "logout", "listZones\x00", "listzones ", "Login"]),
        any_text(12).filter(lambda s: s.lower() not in COMMANDS), st.none(),
    )  # fmt: skip


ID_KINDS = (
    ("serviceofferingid", "offering"), ("diskofferingid", "disk_offering"), ("templateid", "template"),
    ("zoneid", "zone"), ("podid", "pod"), ("clusterid", "cluster"), ("hostid", "host"), ("storageid", "pool"),
    ("virtualmachineid", "vm"), ("volumeid", "volume"),
)  # fmt: skip


def _id_for(p: Param, world: World) -> st.SearchStrategy[str]:
    for suffix, kind in ID_KINDS:
        if p.name.lower().endswith(suffix) and world.kinds.get(kind):
            return st.sampled_from(world.kinds[kind])
    return st.sampled_from(world.ids) if world.ids else st.uuids().map(str)


@st.composite
def well_formed_requests(draw: st.DrawFn, world: World) -> FuzzRequest:
    """What a correct client sends: a declared command, signed, its required parameters (and some optional
    ones) with plausible values and ids of the right kind. Some succeed, some start jobs that must end."""
    jobs = [c for c in world.commands if COMMANDS[c.lower()].kind == Kind.ASYNC]
    cmd = COMMANDS[draw(st.sampled_from(world.commands) | st.sampled_from(jobs)).lower()]
    pairs = [("command", cmd.name), ("response", "json")]
    for p in cmd.params:
        if p.type == T.MAP or not (p.required or draw(st.integers(0, 4)) == 0):
            continue
        typ = p.item_type if p.type == T.LIST else p.type
        value = draw(_id_for(p, world)) if typ == T.UUID and not p.choices else draw(plausible(p, world.ids))
        pairs.append((p.name, value))
    return FuzzRequest(cmd.name, pairs, draw(st.sampled_from(["GET", "POST"])), "signed")


@st.composite
def fuzz_requests(draw: st.DrawFn, world: World) -> FuzzRequest:
    if world.kinds and draw(st.integers(0, 4)) == 0:
        return draw(well_formed_requests(world))
    command = draw(_known_or_random_command(world))
    cmd = COMMANDS.get((command or "").lower())
    pairs: list[tuple[str, str]] = []
    if command is not None:
        pairs.append(("command", command))
    if draw(st.booleans()):
        pairs.append(("response", draw(st.sampled_from(["json", "json", "xml", "JSON", "", "yaml"]))))
    if cmd is not None:
        pairs += draw(declared_pairs(cmd, world.ids))
    for _ in range(draw(st.integers(0, 2))):  # undeclared names, and names of other commands' params
        pairs.append((draw(st.one_of(any_text(10), st.sampled_from(["id", "page", "pagesize", "apikey", "sessionkey",
                                                                     "signature", "expires", "Command"]))),
                      draw(st.one_of(any_text(), st.sampled_from(INT_EDGES)))))  # fmt: skip
    if pairs and draw(st.integers(0, 5)) == 0:  # a repeated parameter, with another value
        name, _ = draw(st.sampled_from(pairs))
        pairs.append((name, draw(any_text(10))))
    raw = draw(st.sampled_from([b"", b"", b"", b"", b"&x=%ff%fe%00", b"&name=\xff\xfe", b"&%c3%28=1", b"&&=&"]))
    auths = ["signed", "signed", "signed", "signed", "unsigned", "badsig", "expired", "unknownkey"]
    if world.session is not None:
        auths += ["session", "session", "session", "badsession"]
    auth = draw(st.sampled_from(auths))
    if auth == "session" and (command or "").lower() == "logout":
        auth = "signed"  # the session serves the whole run
    method = draw(st.sampled_from(["GET", "POST"]))
    return FuzzRequest(command, pairs, method, auth, raw)


@st.composite
def declared_pairs(draw: st.DrawFn, cmd: Command, ids: list[str]) -> list[tuple[str, str]]:
    """For each declared parameter: left out, a plausible value or a hostile one; required ones mostly given."""
    pairs: list[tuple[str, str]] = []
    for p in cmd.params:
        keep = draw(st.integers(0, 9)) < (9 if p.required else 3)
        if not keep:
            continue
        if p.type == T.MAP:
            pairs += draw(map_pairs(p, ids))
        else:
            name = draw(st.sampled_from([p.name, p.name, p.name, p.name.upper()]))
            pairs.append((name, draw(param_values(p, ids))))
    return pairs


# --- sending ----------------------------------------------------------------------------------------


def _signature(params: dict[str, str], secret: str) -> str:
    canonical = "&".join(f"{k}={quote(v, safe='*')}" for k, v in sorted(params.items())).lower()
    return base64.b64encode(hmac.new(secret.encode(), canonical.encode(), hashlib.sha1).digest()).decode()


def _session_key(req: FuzzRequest, session: dict[str, str] | None) -> str:
    key = (session or {}).get("sessionkey", "")
    return key if req.auth == "session" else key[::-1]


def encode(req: FuzzRequest, keys: Keys, session: dict[str, str] | None = None) -> bytes:
    """The query string or form body: the pairs as given (repeats kept) and the raw bytes, then the auth
    parameters. The signature is made over what the server will see (parsed as it parses, the last value
    of a repeated name winning), so that a signed request gets past the signature check."""
    pairs = list(req.pairs)
    unsigned = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs).encode() + req.raw_suffix
    if req.auth == "unsigned":
        return unsigned
    if req.auth in ("session", "badsession"):
        return unsigned + b"&sessionkey=" + quote(_session_key(req, session), safe="").encode()
    apikey = keys.apikey if req.auth != "unknownkey" else "no-such-key-" + keys.apikey[:8]
    when = time.time() + (600 if req.auth != "expired" else -600)
    auth = [("apiKey", apikey), ("signatureVersion", "3"),
            ("expires", time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(when)))]  # fmt: skip
    text = unsigned + b"&" + "&".join(f"{k}={quote(v, safe='')}" for k, v in auth).encode()
    seen = dict(parse_qsl(text.decode("utf-8", "replace"), keep_blank_values=True))
    seen = {k: v for k, v in seen.items() if k.lower() != "signature"}
    sig = _signature(seen, keys.secretkey)
    if req.auth == "badsig":
        sig = sig[::-1]
    return text + b"&signature=" + quote(sig, safe="").encode()


def send(
    client: httpx.Client, endpoint: str, req: FuzzRequest, keys: Keys, session: dict[str, str] | None = None
) -> httpx.Response:
    data = encode(req, keys, session)
    headers = {}
    if req.auth in ("session", "badsession") and session is not None:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in session.items())
    if req.method == "GET":  # raw bytes travel percent-encoded in a URL
        return client.get(endpoint + "?" + quote_from_bytes(data, safe="&=%"), headers=headers)
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    return client.post(endpoint, content=data, headers=headers)


# --- checks -----------------------------------------------------------------------------------------


class ServerError(AssertionError):
    """A 5xx that is not one of CloudStack's expected refusals, or a reply outside the envelope."""


def check_reply(req: FuzzRequest, resp: httpx.Response) -> dict[str, Any]:
    """Every answer is JSON in CloudStack's envelope; an error carries errorcode = status and a text,
    under `<command>response` (or `errorresponse` for an unknown command); no 5xx but CloudStack's own."""
    ctype = resp.headers.get("content-type", "")
    if not ctype.startswith("application/json"):
        raise ServerError(f"{resp.status_code} with content type {ctype!r}: {resp.text[:200]!r} for {req!r}")
    body = resp.json()
    if not isinstance(body, dict) or len(body) != 1:
        raise ServerError(f"not one envelope key: {str(body)[:200]} for {req!r}")
    (key, inner), = body.items()  # fmt: skip
    if not key.endswith("response"):
        raise ServerError(f"envelope key {key!r} for {req!r}")
    if resp.status_code == 200:
        return body
    if resp.status_code not in ALLOWED_ERROR_CODES:
        raise ServerError(f"server error {resp.status_code}: {inner.get('errortext')!r} for {req!r}")
    if inner.get("errorcode") != resp.status_code or not inner.get("errortext"):
        raise ServerError(f"error without errorcode/errortext: {inner} for {req!r}")
    named = {k.lower(): v for k, v in req.pairs}.get("command")  # as the server reads it: the last one wins
    cmd = COMMANDS.get(named.lower()) if named else None
    if cmd is not None and key not in (cmd.response_key, "errorresponse"):
        raise ServerError(f"error under {key!r}, expected {cmd.response_key!r} for {req!r}")
    return body


def dump(database: Path | str, ignore: dict[str, set[str]] | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows (sorted), without the volatile tables and columns: of a SQLite file, or of a
    PostgreSQL database given by its SQLAlchemy URL."""
    skip = {
        t: VOLATILE_COLUMNS.get(t, set()) | (ignore or {}).get(t, set()) for t in {*VOLATILE_COLUMNS, *(ignore or {})}
    }
    if isinstance(database, str) and database.startswith("postgresql"):
        return _dump_postgres(database, skip)
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out: dict[str, list[tuple[Any, ...]]] = {}
        for t in tables:
            if t in VOLATILE_TABLES or t.startswith("alembic") or t.startswith("sqlite"):
                continue
            cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')]
            keep = [c for c in cols if c not in skip.get(t, set())]
            columns = ", ".join(f'"{c}"' for c in keep)
            rows = conn.execute(f'SELECT {columns} FROM "{t}"').fetchall()
            out[t] = sorted(rows, key=repr)
        return out
    finally:
        conn.close()


def _dump_postgres(url: str, skip: dict[str, set[str]]) -> dict[str, list[tuple[Any, ...]]]:
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo) as conn:
        cols: dict[str, list[str]] = {}
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
            "ORDER BY table_name, ordinal_position"
        ):
            cols.setdefault(table, []).append(column)
        out: dict[str, list[tuple[Any, ...]]] = {}
        for t, all_cols in cols.items():
            if t in VOLATILE_TABLES or t.startswith("alembic"):
                continue
            keep = [c for c in all_cols if c not in skip.get(t, set())]
            columns = ", ".join(f'"{c}"' for c in keep)
            out[t] = sorted(conn.execute(f'SELECT {columns} FROM "{t}"').fetchall(), key=repr)  # type: ignore[call-overload]
        return out


def diff(before: dict[str, list[tuple[Any, ...]]], after: dict[str, list[tuple[Any, ...]]]) -> str:
    changed = []
    for t in sorted(set(before) | set(after)):
        b, a = set(map(repr, before.get(t, []))), set(map(repr, after.get(t, [])))
        if a != b:
            changed.append(f"{t}: -{sorted(b - a)[:2]} +{sorted(a - b)[:2]}")
    return "; ".join(changed)


@dataclass
class Tally:
    """What a fuzz run saw, for the script's summary and the test's print."""

    sent: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    by_auth: dict[str, int] = field(default_factory=dict)
    jobs_waited: int = 0
    jobs_succeeded: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, req: FuzzRequest, status: int) -> None:
        self.sent += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.by_auth[req.auth] = self.by_auth.get(req.auth, 0) + 1

    def summary(self) -> str:
        return json.dumps({"sent": self.sent, "by_status": dict(sorted(self.by_status.items())),
                           "by_auth": self.by_auth, "jobs_waited": self.jobs_waited,
                           "jobs_succeeded": self.jobs_succeeded,
                           "failures": len(self.failures)})  # fmt: skip


def run_one(
    client: httpx.Client,
    world: World,
    req: FuzzRequest,
    tally: Tally,
    wait_job: Callable[[str], dict[str, Any]],
) -> None:
    """Sends one request and checks it: the envelope, no server error, a refused request changes no
    row, a job it started ends without an internal error."""
    # Too many failed logins lock the user, by design: a refused login may change its state.
    ignore = {"users": {"state"}} if (req.command or "").lower() == "login" else None
    before = dump(world.database, ignore)
    resp = send(client, world.endpoint, req, world.keys, world.session)
    tally.add(req, resp.status_code)
    body = check_reply(req, resp)
    if resp.status_code != 200:
        after = dump(world.database, ignore)
        if after != before:
            raise AssertionError(f"refused request ({resp.status_code}) changed the database: "
                                 f"{diff(before, after)} for {req!r}")  # fmt: skip
        return
    (inner,) = body.values()
    jobid = inner.get("jobid") if isinstance(inner, dict) else None
    if isinstance(jobid, str):
        tally.jobs_waited += 1
        res = wait_job(jobid)
        result = res.get("jobresult") or {}
        tally.jobs_succeeded += res["jobstatus"] == 1
        if res["jobstatus"] == 2 and "Internal error running" in str(result.get("errortext", "")):
            raise ServerError(f"job ended with an internal error: {result} for {req!r}")


def new_uuid() -> str:
    return str(uuid.uuid4())
