"""The stall rule of host-to-host moves (agent/drivers/qemu/stall.py): when bytes that should move
stop, the move fails; a READY mirror of an idle guest and a slow, bandwidth-limited move do not."""

from __future__ import annotations

import pytest

from strato.agent.drivers.qemu.migration import _uri_peer
from strato.agent.drivers.qemu.stall import STALL_ENV, STALL_S, LinkStalled, StallClock, stall_seconds


def test_bytes_that_stop_while_expected_are_a_stall() -> None:
    clock = StallClock(20.0)
    clock.observe("mirroring", 1000, 0.0)
    clock.observe("mirroring", 1000, 19.9)
    with pytest.raises(LinkStalled, match="no data reached the target host for 20 s: the link between the hosts"):
        clock.observe("mirroring", 1000, 20.0)


def test_a_slow_move_that_advances_is_not_a_stall() -> None:
    clock = StallClock(20.0)
    for second in range(200):
        clock.observe("mirroring", second * 1024 * 1024, float(second * 2))  # 0.5 MiB/s


def test_no_progress_expected_is_not_a_stall() -> None:
    """All mirrors READY, idle guest: the stage is None; the count starts again in the next stage."""
    clock = StallClock(20.0)
    clock.observe("mirroring", 5000, 0.0)
    for second in range(1, 100):
        clock.observe(None, 5000, float(second))
    clock.observe("migrating", 0, 100.0)
    clock.observe("migrating", 0, 119.0)
    with pytest.raises(LinkStalled):
        clock.observe("migrating", 0, 120.0)


def test_the_stall_time_can_be_set_for_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STALL_ENV, "4")
    assert stall_seconds() == 4.0
    monkeypatch.setenv(STALL_ENV, "nonsense")
    assert stall_seconds() == STALL_S


def test_the_peers_whose_connections_a_rollback_breaks() -> None:
    assert _uri_peer("tcp:198.18.0.12:4444") == [("198.18.0.12", 4444)]
    assert _uri_peer("tcp:[fd00::2]:4444,keep-alive=on") == [("fd00::2", 4444)]
    assert _uri_peer("nbd://198.18.0.12:10809/disk1") == [("198.18.0.12", 10809)]
    assert _uri_peer("unix:/run/x.sock") == []
    assert _uri_peer("nbd+unix:///disk1?socket=/run/x") == []
