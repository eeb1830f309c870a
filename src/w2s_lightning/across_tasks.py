"""Statistics across tasks: the paper's claims are about many tasks at once ("median PGR
≈ 20-25% for naive fine-tuning"; "the confidence loss raises PGR"), so the report states them
the same way, with SciPy's intervals and tests rather than hand-written ones.

- ``task_medians``: per (method, loss, variants), the median over tasks of each task's PGR (its
  median over valid pairs, mean over seeds: ``tables.summary_table``), a percentile bootstrap
  interval that resamples *tasks*, and the share of tasks with PGR > 0 with its exact binomial
  interval. Tasks without a valid pair (weak model at chance, gap within noise) are left out
  and counted.
- ``paired_differences``: one method against a baseline on the same (task, pair, seed), where
  the weak model and the ceiling are the same stages, so the difference in PGR is the
  difference in transfer accuracy over one gap (runs on other stages are left out, with a
  warning that names them). Per task: mean and Student-t interval over seeds; across tasks:
  the median and a Wilcoxon signed-rank test of the per-task means.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
from scipy import stats

from w2s_lightning.roles import CEILING, WEAK
from w2s_lightning.tables import interval, pair_status, variants

log = logging.getLogger(__name__)

BASELINE_LOSS = "xent"
BASELINE_METHOD = "direct"
BOOTSTRAP_RESAMPLES = 10_000


def median_interval(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median, resampling the values (tasks); NaN
    with fewer than two values."""
    if len(values) < 2 or np.ptp(values) == 0:
        return (math.nan, math.nan) if len(values) < 2 else (float(values[0]), float(values[0]))
    result = stats.bootstrap(
        (values,), np.median, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile", rng=np.random.default_rng(seed)
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def task_medians(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (method, loss, variants): the tasks with a PGR, its median over them with a bootstrap
    interval over tasks, and the share of tasks with PGR > 0 with a Clopper-Pearson interval."""
    rows = []
    keys = ["method", "loss", *variants(summary)]
    for values, group in summary.groupby(keys, sort=True, dropna=False):
        pgr = group["median_pgr"].dropna().to_numpy()
        low, high = median_interval(pgr)
        positive = int((pgr > 0).sum())
        share = stats.binomtest(positive, len(pgr)).proportion_ci() if len(pgr) else None
        rows.append(
            {
                **dict(zip(keys, values, strict=True)),
                "tasks": len(pgr),
                "tasks_without_pgr": int(group["median_pgr"].isna().sum()),
                "median_pgr": float(np.median(pgr)) if len(pgr) else math.nan,
                "pgr_low": low,
                "pgr_high": high,
                "share_pgr_positive": positive / len(pgr) if len(pgr) else math.nan,
                "share_low": share.low if share else math.nan,
                "share_high": share.high if share else math.nan,
            }
        )
    return pd.DataFrame(rows)


def comparisons(records: pd.DataFrame) -> list[tuple[dict, dict]]:
    """(candidate, baseline) selectors: every loss against xent within a method, and every
    method with xent against direct with xent; variant values must match."""
    found = []
    for method in sorted(records["method"].unique()):
        for loss in sorted(records.loc[records["method"] == method, "loss"].unique()):
            if loss != BASELINE_LOSS:
                found.append(({"method": method, "loss": loss}, {"method": method, "loss": BASELINE_LOSS}))
        if method != BASELINE_METHOD:
            found.append(
                ({"method": method, "loss": BASELINE_LOSS}, {"method": BASELINE_METHOD, "loss": BASELINE_LOSS})
            )
    return found


def _select(records: pd.DataFrame, selector: dict) -> pd.DataFrame:
    mask = np.logical_and.reduce([records[k] == v for k, v in selector.items()])
    return records[mask]


def paired_differences(records: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per task and across tasks, PGR(candidate) - PGR(baseline) on the same (task, pair,
    variants, seed), for every comparison of ``comparisons``. Only pairs whose PGR is read
    (``tables.pair_status``, on the baseline's means over seeds) take part; with several pairs
    a task's difference per seed is the median over them."""
    per_task, across = [], []
    task_keys = ["task", *variants(records)]
    pair_keys = [*task_keys, "weak", "strong"]
    for candidate, baseline in comparisons(records):
        name = f"{candidate['method']}/{candidate['loss']} - {baseline['method']}/{baseline['loss']}"
        base = _select(records, baseline)
        joined = _select(records, candidate).merge(base, on=[*pair_keys, "seed"], suffixes=("", "_base"))
        joined = joined[~_on_other_stages(joined, name)]
        if joined.empty:
            continue
        status = base.groupby(pair_keys, dropna=False).apply(pair_status, include_groups=False)
        ok = status[status == "ok"].index
        joined = joined[joined.set_index(pair_keys).index.isin(ok)]
        joined = joined.assign(difference=joined["pgr"] - joined["pgr_base"])
        means = []
        for task_values, group in joined.groupby(task_keys, sort=True, dropna=False):
            per_seed = group.groupby("seed")["difference"].median()
            mean, low, high = interval(per_seed)
            means.append(mean)
            per_task.append(
                {
                    "comparison": name,
                    **dict(zip(task_keys, task_values, strict=True)),
                    "difference": mean,
                    "low": low,
                    "high": high,
                    "seeds": len(per_seed),
                }
            )
        means = np.array(means, dtype=float)
        means = means[np.isfinite(means)]
        across.append(
            {
                "comparison": name,
                "tasks": len(means),
                "median_difference": float(np.median(means)) if len(means) else math.nan,
                "tasks_candidate_higher": int((means > 0).sum()),
                "wilcoxon_p": wilcoxon_p(means),
            }
        )
    return pd.DataFrame(per_task), pd.DataFrame(across)


def _on_other_stages(joined: pd.DataFrame, name: str) -> pd.Series:
    """Rows whose candidate read another weak model or ceiling than its baseline (a stage key
    recorded by both and not the same), with a warning naming them. Their difference would mix
    two gaps: a piece of a sweep rerun on another machine, or after a change to the stage keys,
    trains its own ground truth. A record without keys (older results) cannot be checked."""
    other = pd.Series(False, index=joined.index)
    for role in (WEAK, CEILING):
        mine, base = joined[f"{role}_stage"], joined[f"{role}_stage_base"]
        other |= (mine != base) & (mine != "") & (base != "")
    if other.any():
        runs = ", ".join(f"{row.task} seed {row.seed}" for row in joined[other].itertuples())
        log.warning(
            "%s: %d run(s) left out (%s): their weak or ceiling stage is not the baseline's. Rerun the baseline "
            "with reuse_results=false on the same stage cache to pair them.",
            name,
            int(other.sum()),
            runs,
        )
    return other


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of per-task differences (exact for small
    samples); NaN where there is nothing to test (fewer than two tasks, or all zero)."""
    nonzero = differences[differences != 0]
    if len(nonzero) < 2:
        return math.nan
    return float(stats.wilcoxon(differences).pvalue)
