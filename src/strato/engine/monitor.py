"""The host monitor: pings every host's agent, tracks its connection status, and hands the agent's
ground truth (VM power states, pool capacity) to whoever reconciles it.

With several servers, the hosts are split among the live servers by a hash of the host id, so each
host is pinged by exactly one server and the work spreads.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import as_utc, utcnow
from strato.db.engine import Database
from strato.db.models import Host, ServerNode, StoragePool
from strato.engine.allocator import reaches
from strato.engine.audit import record_event
from strato.protocol.client import AgentClient, AgentClientError, AgentUnreachable
from strato.protocol.messages import DriverCapabilities, GetState, PoolRef, StateReport

log = logging.getLogger("strato.monitor")

FollowUp = Callable[[], None]
"""Agent calls a reconciler wants made, run after the round's transaction (never inside it)."""
StateConsumer = Callable[[Session, Host, StateReport], list[FollowUp] | None]
STATE_CONSUMERS: list[StateConsumer] = []


def on_state_report(fn: StateConsumer) -> StateConsumer:
    """Registers a reconciler of agents' state reports (e.g. VM sync: the agent's power state wins).
    It may return follow-ups: calls to make once the round's transaction is committed."""
    STATE_CONSUMERS.append(fn)
    return fn


def store_capabilities(host: Host, capabilities: DriverCapabilities | None) -> None:
    """Keep what the host's driver reported it can do (written only when it changed; an agent that
    reports nothing leaves the last report in place)."""
    if capabilities is None:
        return
    reported = capabilities.model_dump(mode="json")
    if host.capabilities != reported:
        host.capabilities = reported


@dataclass
class RoundStats:
    hosts: int = 0
    up: int = 0
    failed: int = 0
    seconds: float = 0.0
    transitions: list[tuple[str, str, str]] = field(default_factory=list)
    follow_up_failures: int = 0


class HostMonitor:
    def __init__(
        self,
        db: Database,
        server_id: str,
        client_for: Callable[[str, str], AgentClient],
        interval: Callable[[], float],
        alert_after: Callable[[], float],
        dead_after: float = 15.0,
        concurrency: int = 16,
    ) -> None:
        self.db = db
        self.server_id = server_id
        self.client_for = client_for
        self.interval = interval
        self.alert_after = alert_after
        self.dead_after = dead_after
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ping")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_round = RoundStats()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="host-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.last_round = self.run_round()
            except Exception:
                log.exception("host monitor round failed")
            self._stop.wait(max(0.2, self.interval() - (time.monotonic() - started)))

    # --- one round ---------------------------------------------------------------------------------

    def my_hosts(self, session: Session) -> list[Host]:
        hosts = list(session.scalars(select(Host).where(Host.removed.is_(None))))
        limit = utcnow() - timedelta(seconds=self.dead_after)
        live = sorted(
            {n.id for n in session.scalars(select(ServerNode)) if as_utc(n.heartbeat) >= limit} | {self.server_id}
        )
        index = live.index(self.server_id)
        return [h for h in hosts if _shard(h.id, len(live)) == index]

    def run_round(self) -> RoundStats:
        started = time.monotonic()
        with self.db.session() as s:
            targets = []
            # One query for every pool; each host is given the ones it reaches, found by scope (every
            # host has a local pool: testing each pool against each host grew with hosts squared).
            by_scope: dict[tuple[str, str | None], list[StoragePool]] = {}
            for p in s.scalars(select(StoragePool).where(StoragePool.removed.is_(None))):
                by_scope.setdefault(_scope_key(p), []).append(p)
            for host in self.my_hosts(s):
                reached = [
                    p
                    for key in (("HOST", host.id), ("CLUSTER", host.cluster_id), ("ZONE", host.zone_id))
                    for p in by_scope.get(key, ())
                    if reaches(host, p)
                ]
                pools = [PoolRef(id=p.id, path=p.path) for p in reached]
                targets.append((host.id, host.url, host.token, pools))
        results = list(self._pool.map(lambda t: (t[0], self._ping(t[1], t[2], t[3])), targets))
        stats = RoundStats(hosts=len(targets))
        alert_after = self.alert_after()  # read before the write transaction: SQLite has one writer
        follow_ups: list[FollowUp] = []
        with self.db.session() as s:
            # The round's hosts and the live pools in two queries (held: the identity map is weak), so
            # that each report's s.get of its host and pools costs no query.
            ids = [host_id for host_id, _ in results]
            held: list[object] = [
                h
                for i in range(0, len(ids), 5000)
                for h in s.scalars(select(Host).where(Host.id.in_(ids[i : i + 5000])))
            ]
            held += list(s.scalars(select(StoragePool).where(StoragePool.removed.is_(None))))
            # The reports' changes (last ping, status, pool usage, VM power states) are flushed together at
            # the commit: a flush before each reconciler's query cost more than the query.
            with s.no_autoflush:
                for host_id, report in results:
                    self._apply_report(s, stats, host_id, report, alert_after, follow_ups)
        for done in self._pool.map(_run_follow_up, follow_ups):
            stats.follow_up_failures += 0 if done else 1
        stats.seconds = time.monotonic() - started
        return stats

    def _apply_report(
        self,
        s: Session,
        stats: RoundStats,
        host_id: str,
        report: StateReport | None,
        alert_after: float,
        follow_ups: list[FollowUp],
    ) -> None:
        row = s.get(Host, host_id)
        if row is None or row.removed is not None:
            return
        change = self._apply(s, row, report, alert_after, follow_ups)
        if change:
            stats.transitions.append((row.name, change[0], change[1]))
        if report is None:
            stats.failed += 1
        else:
            stats.up += 1

    def _ping(self, url: str, token: str, pools: list[PoolRef]) -> StateReport | None:
        """GetState, asked twice when the first try fails without a timeout: a pooled keep-alive
        connection that the agent closes just as it is reused (uvicorn closes idle ones after 5 s, the
        default ping interval) fails at once and must not make a healthy host Disconnected."""
        for attempt in (1, 2):
            try:
                return self.client_for(url, token).call(GetState(pools=pools))
            except AgentClientError as exc:
                timed_out = isinstance(exc.__cause__, httpx.TimeoutException)
                if attempt == 1 and isinstance(exc, AgentUnreachable) and not timed_out:
                    continue
                log.info("host %s did not answer: %s", url, exc)
        return None

    def _apply(
        self, s: Session, host: Host, report: StateReport | None, alert_after: float, follow_ups: list[FollowUp]
    ) -> tuple[str, str] | None:
        now = utcnow()
        before = host.status
        if report is not None:
            host.last_ping = now
            host.disconnected_since = None
            host.status = "Up"
            store_capabilities(host, report.capabilities)
            for pool_report in report.pools:
                pool = s.get(StoragePool, pool_report.id)
                if pool is not None and pool.removed is None:
                    if not pool.capacity_fixed:
                        pool.capacity_bytes = pool_report.capacity_bytes
                    pool.used_bytes = pool_report.used_bytes
            for consumer in STATE_CONSUMERS:
                follow_ups.extend(consumer(s, host, report) or [])
        elif before == "Up":
            host.status = "Disconnected"
            host.disconnected_since = now
        elif before == "Disconnected":
            since = as_utc(host.disconnected_since or now)
            if (now - since).total_seconds() >= alert_after:
                host.status = "Alert"
        if host.status == before:
            return None
        level = "INFO" if host.status == "Up" else ("WARN" if host.status == "Disconnected" else "ERROR")
        record_event(
            s,
            f"HOST.{host.status.upper()}",
            f"Host {host.name} changed from {before} to {host.status}",
            account_id=None,
            user_id=None,
            level=level,
            resource_type="Host",
            resource_id=host.id,
        )
        log.info("host %s: %s -> %s", host.name, before, host.status)
        return before, host.status


def _run_follow_up(call: FollowUp) -> bool:
    """A follow-up's failure is logged and tried again from the next report: the round goes on."""
    try:
        call()
    except Exception:
        log.warning("a reconciliation call after the monitor round failed", exc_info=True)
        return False
    return True


def _scope_key(pool: StoragePool) -> tuple[str, str | None]:
    """Where a pool is reached from: its host, its cluster or its zone (as allocator.reaches)."""
    if pool.scope == "HOST":
        return ("HOST", pool.host_id)
    if pool.scope == "CLUSTER":
        return ("CLUSTER", pool.cluster_id)
    return ("ZONE", pool.zone_id)


def _shard(host_id: str, n: int) -> int:
    return int(hashlib.sha1(host_id.encode()).hexdigest(), 16) % n
