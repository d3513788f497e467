"""Issue 16's failure cases: every bad input gives one line ``error: ...`` and exit 2, never a
traceback or a silent success (the table and its runner: tests/failure_cases.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from failure_cases import CASES, GROUPS, Case, make_checkpoint, run_case

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run (64 images, 1 epoch) every case attacks or copies."""
    return make_checkpoint(tmp_path_factory.mktemp("failures"))


def test_the_table_covers_every_group_with_at_least_60_cases() -> None:
    assert len(CASES) >= 60
    assert {case.group for case in CASES} == set(GROUPS)
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.group}-{c.id}" for c in CASES])
def test_failure_case(case: Case, tmp_path: Path, checkpoint: Path) -> None:
    outcome = run_case(case, tmp_path, checkpoint)
    assert "Traceback" not in outcome.stderr, outcome.stderr[-2000:]
    assert outcome.kind != "traceback", outcome.why
    assert outcome.kind != "silent", f"{case.id}: a bad input succeeded silently"
    expected = "ok" if case.code == 0 else "one-line"
    assert outcome.kind == expected, f"{case.id}: {outcome.why}"
    if expected == "one-line":
        lines = [line for line in outcome.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), outcome.stderr
        assert outcome.code == case.code
