"""The suite runs on several pytest-xdist workers (scripts/test.sh); a module's tests share its
module-scoped fixtures (a server, agents, booted guests), so they must all run in the process that built
them. This module checks that the scheduling keeps them together: each build of its module fixture
writes its process id in a file of the run's shared temp root, and split over two workers the module
would be built in two processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def builders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    record = tmp_path_factory.getbasetemp().parent / "xdist-scope-builders"
    with record.open("a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(0.3)  # long enough for an idle second worker to be handed the next test
    return record


def _pids(record: Path) -> set[int]:
    return {int(line) for line in record.read_text().split()}


def test_the_first_test_builds_the_module_fixture(builders: Path) -> None:
    assert os.getpid() in _pids(builders)


def test_the_second_test_runs_where_it_was_built(builders: Path) -> None:
    time.sleep(0.3)
    assert _pids(builders) == {os.getpid()}, "the module's fixture was built in several processes"


def test_the_third_test_too(builders: Path) -> None:
    time.sleep(0.3)
    assert _pids(builders) == {os.getpid()}, "the module's fixture was built in several processes"
