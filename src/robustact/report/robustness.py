"""The plain-text robustness table printed after an evaluation: accuracy per attack and eps.

    print(robustness_table(report))            # a RobustnessReport
    print(robustness_table(record))            # or its to_dict() record (e.g. read back)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from robustact.results.store import CLEAN, WORST_CASE

if TYPE_CHECKING:
    from robustact.eval import RobustnessReport


def robustness_table(report: RobustnessReport | Mapping[str, Any]) -> str:
    """Robust accuracy (%) per attack (rows) and eps (columns), then the worst case and, for a
    randomized model, how often its two judgings disagreed."""
    record = report if isinstance(report, Mapping) else report.to_dict()
    eps_list = record["eps_list"]
    accuracy: dict[tuple[str, float], float] = {}
    worst: dict[float, float] = {}
    for row in record["rows"]:
        if row["attack"] == WORST_CASE:
            worst[row["eps"]] = row["robust_accuracy"]
        elif row["attack"] != CLEAN:
            accuracy.setdefault((row["attack"], row["eps"]), row["robust_accuracy"])
    labels = dict.fromkeys(label for label, _ in accuracy)
    lines = [f"{'attack':<22}" + "".join(f"{'eps ' + format(e, '.4g'):>14}" for e in eps_list),
             f"{'clean':<22}" + _percent(record["clean_accuracy"])]
    lines += [f"{label:<22}" + "".join(_percent(accuracy.get((label, e))) for e in eps_list)
              for label in labels]
    lines.append(f"{'worst case':<22}" + "".join(_percent(worst[e]) for e in eps_list))
    if record.get("randomized"):
        flips = sum(a.get("flips") or 0 for a in record.get("attacks") or [])
        lines.append(f"randomized model: predictions averaged over {record['n_samples']} passes, "
                     f"judged twice; the judgings disagreed on {record.get('clean_flips', 0)} "
                     f"clean and {flips} attacked points (a point is robust only if both are "
                     "right)")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return f"{'-':>14}" if value is None else f"{100 * value:>13.1f}%"
