"""The recovery ratio: how much of the prompt's effect an adapter recovers without the prompt.

``recovery = (S_system - S_unprompted) / (S_prompted - S_unprompted)`` for one metric, where each ``S`` is the mean
of per-item scores on the same held-out items. 1 means the adapter does what the prompt does; 0 means it does
what the bare model does.

The noise rule: when the prompt makes no measurable difference, the ratio divides by noise and can take any
value, so it is reported as undefined instead. The gap ``S_prompted - S_unprompted`` is within noise when

* ``|gap| <= noise_floor`` (a fixed absolute epsilon, default 0.02 on a [0, 1] metric), or
* the 95% paired-bootstrap interval of the gap (items resampled with replacement, ``n_boot`` times, fixed seed)
  contains 0, or
* fewer than 2 items were scored (no spread can be estimated).
"""

from __future__ import annotations

import numpy as np

NOISE_FLOOR = 0.02
N_BOOT = 1000


def recovery(
    prompted: list[float],
    unprompted: list[float],
    system: list[float],
    noise_floor: float = NOISE_FLOOR,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict:
    """Recovery ratio of ``system`` between the two bounds, with the noise rule of the module docstring.

    The three lists hold per-item scores of the same items in the same order.

    Returns:
        ``{"ratio": float | None, "defined": bool, "reason": str, "gap": float | None, "gap_ci": [lo, hi] | None,
        "ratio_ci": [lo, hi] | None, "n": int}``; ``ratio`` is None exactly when ``defined`` is false.
    """
    if not len(prompted) == len(unprompted) == len(system):
        raise ValueError(f"paired scores differ in length: {len(prompted)}, {len(unprompted)}, {len(system)}")
    n = len(prompted)
    p, u, s = (np.asarray(x, dtype=float) for x in (prompted, unprompted, system))
    if n == 0:
        return _result(None, "no items scored", None, None, None, 0)
    gap = float(p.mean() - u.mean())
    idx = _resamples(n, n_boot, seed)
    boot_gap = p[idx].mean(axis=1) - u[idx].mean(axis=1)
    gap_ci = [float(np.percentile(boot_gap, 2.5)), float(np.percentile(boot_gap, 97.5))]
    if n < 2:
        return _result(None, "fewer than 2 items: no noise estimate", gap, gap_ci, None, n)
    if abs(gap) <= noise_floor:
        return _result(None, f"|gap| {abs(gap):.3f} <= noise floor {noise_floor}", gap, gap_ci, None, n)
    if gap_ci[0] <= 0 <= gap_ci[1]:
        return _result(None, "95% bootstrap interval of the gap contains 0", gap, gap_ci, None, n)
    ratio = float((s.mean() - u.mean()) / gap)
    keep = np.abs(boot_gap) > noise_floor  # resamples whose own gap is noise would explode the ratio
    boot_ratio = (s[idx].mean(axis=1) - u[idx].mean(axis=1))[keep] / boot_gap[keep]
    ratio_ci = [float(np.percentile(boot_ratio, 2.5)), float(np.percentile(boot_ratio, 97.5))] if keep.any() else None
    return _result(ratio, "", gap, gap_ci, ratio_ci, n)


def _result(ratio, reason, gap, gap_ci, ratio_ci, n) -> dict:
    return {"ratio": ratio, "defined": ratio is not None, "reason": reason, "gap": gap, "gap_ci": gap_ci,
            "ratio_ci": ratio_ci, "n": n}


def mean_interval(scores: list[float], n_boot: int = N_BOOT, seed: int = 0) -> list[float] | None:
    """The 95% bootstrap interval of the mean of per-item ``scores`` (items resampled as for the recovery ratio),
    or None for fewer than 2 items."""
    if len(scores) < 2:
        return None
    x = np.asarray(scores, dtype=float)
    boot = x[_resamples(len(x), n_boot, seed)].mean(axis=1)
    return [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``n_boot`` resamples of ``n`` item indices, with replacement: the same for every system of a run."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
