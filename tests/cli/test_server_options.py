"""`strato server` refuses a --dead-after that a busy server's missed heartbeats would reach: its
running jobs would be handed to another server while it still runs them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def _server(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "strato.cli.main", "server", "--data-dir", str(tmp_path), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_dead_after_under_three_heartbeats_is_refused(tmp_path: Path) -> None:
    done = _server(tmp_path, "--dead-after", "5")  # the heartbeat is every 2 s
    assert done.returncode == 2, done
    said = re.sub(r"[\s│╭╮╰╯─]+", " ", done.stderr)  # rich draws the error in a box
    assert "--dead-after 5 s is under 3 heartbeats of 2 s" in said, done.stderr
    assert not (tmp_path / "strato.db").exists(), "nothing is made for a refused start"
