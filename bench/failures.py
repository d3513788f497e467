"""The census of issue 16's failure cases (not a test): runs them, prints the counts, writes JSON.

    python bench/failures.py                                  # this tree
    python bench/failures.py --only store- --verbose          # cases whose id starts so
    cd /tmp && PYTHONPATH=/tmp/base16/src /work/main/.venv/bin/python \\
        /work/main/bench/failures.py --out /tmp/census_before.json   # another source tree

Runs every case of ``tests/failure_cases.py`` (the table ``tests/test_failures.py`` asserts)
against whichever ``robustact`` is imported (``PYTHONPATH`` picks the tree; the script prints
which) and counts each outcome: ``one-line`` (nonzero exit, one stderr line ``error: ...``
matching the case's pattern), ``ok`` (a case that must succeed did), ``traceback``, ``silent``
(exit 0 for a bad input) and ``other`` (a wrong or multi-line message), overall and per group.
The JSON holds every case's outcome and the reason, so failing cases can be routed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import robustact  # noqa: E402
from _results import setup, write_result  # noqa: E402
from failure_cases import CASES, GROUPS, KINDS, make_checkpoint, run_case  # noqa: E402


def census(only: str, verbose: bool) -> list[dict[str, Any]]:
    """Every selected case's outcome as a dict (id, group, kind, code, why, seconds)."""
    rows = []
    with tempfile.TemporaryDirectory() as root:
        ckpt = make_checkpoint(Path(root))
        for i, case in enumerate(c for c in CASES if c.id.startswith(only)):
            start = time.perf_counter()
            outcome = run_case(case, Path(tempfile.mkdtemp(dir=root, prefix=f"{i:03d}-")), ckpt)
            rows.append({"id": case.id, "group": case.group, "kind": outcome.kind,
                         "code": outcome.code, "why": outcome.why,
                         "seconds": round(time.perf_counter() - start, 2)})
            if verbose:
                print(f"{case.id:<36}{outcome.kind:<10}{outcome.why[:150]}", flush=True)
    return rows


def counts_table(rows: list[dict[str, Any]]) -> tuple[str, dict[str, dict[str, int]]]:
    """The counts per group and overall, as text and as a dict."""
    table: dict[str, dict[str, int]] = {}
    for group, name in GROUPS.items():
        kinds = Counter(r["kind"] for r in rows if r["group"] == group)
        if kinds:
            table[f"{group} {name}"] = {"tried": sum(kinds.values()),
                                        **{k: kinds[k] for k in KINDS}}
    total = Counter(r["kind"] for r in rows)
    table["all"] = {"tried": len(rows), **{k: total[k] for k in KINDS}}
    head = f"{'group':<50}{'tried':>6}" + "".join(f"{k:>11}" for k in KINDS)
    lines = [head, "-" * len(head)]
    for label, c in table.items():
        lines.append(f"{label:<50}{c['tried']:>6}" + "".join(f"{c[k]:>11}" for k in KINDS))
    return "\n".join(lines), table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only the cases whose id starts so")
    parser.add_argument("--verbose", action="store_true", help="print each case as it ends")
    parser.add_argument("--out", default="bench/results/failures.json")
    args = parser.parse_args()
    setup()
    print(f"robustact {robustact.__version__} from {robustact.__file__}")
    start = time.perf_counter()
    rows = census(args.only, args.verbose)
    text, table = counts_table(rows)
    print(text)
    failing = [r for r in rows if r["kind"] not in ("one-line", "ok")]
    print(f"\n{len(failing)} case(s) not handled:")
    for r in failing:
        print(f"  {r['id']:<36}{r['kind']:<10}{r['why'][:160]}")
    write_result(args.out, {"robustact": robustact.__file__, "counts": table, "cases": rows,
                            "seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
