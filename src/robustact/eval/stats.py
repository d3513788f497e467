"""Confidence intervals for accuracies measured on a finite sample."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval (95% by default) for a proportion ``successes / n``.

    Well behaved at 0 and 1 (unlike the normal approximation), which matters for robust
    accuracies near 0%.
    """
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for paired outcomes: ``b`` and ``c`` count the pairs
    on which the two runs disagree one way and the other (an exact binomial test of b
    successes in b + c trials at p = 1/2). 1.0 when they never disagree."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def significantly_more(b: int, c: int, alpha: float = 0.05) -> bool:
    """True when ``b`` exceeds ``c`` by more than chance (exact McNemar test at ``alpha``)."""
    return b > c and mcnemar_exact(b, c) < alpha
