"""Results over several seeds: mean ± standard deviation, and whether a difference between two
rows holds beyond seed noise (the difference of the means exceeds the sum of the standard
deviations). Used by ``s2vt benchmark``, ``s2vt demo`` and its studies, so that every table of
seeds is computed and worded the same way.
"""
from __future__ import annotations

import statistics
from typing import Dict, List, Sequence

PerSeed = Dict[str, List[dict]]  # row -> one metrics dict per seed


def mean_std(values: Sequence[float]) -> tuple:
    """(mean, sample standard deviation; 0 for one value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def mean_spread(values: Sequence[float]) -> str:
    """``"m ± s"`` x100 over several seeds, ``"m"`` x100 for one."""
    m, s = mean_std(values)
    return f"{100 * m:.1f} ± {100 * s:.1f}" if len(values) > 1 else f"{100 * m:.1f}"


def compare(per_seed: PerSeed, better: str, worse: str, metric: str = "METEOR") -> dict:
    """Does ``better`` beat ``worse`` on mean ``metric``, and by more than the sum of their standard
    deviations? With one run on both sides there is no noise estimate: ``beyond_noise`` is False (a
    row without seeds, such as a constant caption, may stand against a row of several)."""
    a, b = [m[metric] for m in per_seed[better]], [m[metric] for m in per_seed[worse]]
    (m1, s1), (m2, s2) = mean_std(a), mean_std(b)
    return {"rows": [better, worse], "metric": metric, "means": [m1, m2], "stds": [s1, s2],
            "seeds": [len(a), len(b)], "holds": m1 > m2,
            "beyond_noise": m1 - m2 > s1 + s2 and max(len(a), len(b)) > 1}


def verdict(f: dict) -> str:
    """One line for a :func:`compare` result."""
    if f["beyond_noise"]:
        word = "holds beyond seed noise"
    elif f["holds"]:
        word = "holds on the means only" if max(f["seeds"]) > 1 else "holds on one seed (no noise estimate)"
    else:
        word = "does NOT hold"
    (m1, m2), (s1, s2) = f["means"], f["stds"]
    return (f"{word}: {f['rows'][0]} {100 * m1:.1f} ± {100 * s1:.1f} vs {f['rows'][1]} {100 * m2:.1f} ± "
            f"{100 * s2:.1f} ({f['metric']}, x100, seeds {f['seeds'][0]} and {f['seeds'][1]})")


def print_findings(found: Dict[str, dict]) -> None:
    for name, f in found.items():
        print(f"  {name}: {verdict(f)}")
