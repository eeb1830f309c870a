"""The report's tables: one record per finished experiment, then per-pair means and intervals
over seeds, and per (task, method, loss) the median PGR over valid pairs.

Every config value that varies inside one (task, method, loss, weak, strong) group of a sweep,
such as ``loss.fn.aux_coef`` or ``train.epochs``, becomes a column of its own (a *variant*),
so runs that differ in it are never averaged together nor counted as seeds.

Why it is long: records, the rules that make a variant (settings, null settings, device
layouts), per-pair means with intervals and the per-task summary are one path from results to
the report's tables, each step read only by the next.
"""

from __future__ import annotations

import json
import logging
import math

import pandas as pd
from scipy import stats

from w2s_lightning.cache import canonical
from w2s_lightning.metrics import pgr_status
from w2s_lightning.results import RUN_ONLY_KEYS, Results
from w2s_lightning.roles import BOOTSTRAP, CEILING, PGR_ROLES, TRANSFER, WEAK, is_rung

log = logging.getLogger(__name__)

# Stage metrics copied into a record as <role>_<metric> (NaN where a stage lacks one).
STAGE_EXTRAS = {
    WEAK: ("val_ece", "label_ece", "label_margin"),
    CEILING: ("val_ece", "val_margin"),
    TRANSFER: ("val_margin",),
}
# Per-pair means shown beside PGR (NaN where a run has no such stage or metric).
OPTIONAL_MEANS = (
    "pgr_auroc",
    "transfer_ece",
    "agreement",
    "agreement_where_supervisor_wrong",
    "bootstrap_acc",
    "pgr_bootstrap",
    *(f"{role}_{m}" for role, metrics in STAGE_EXTRAS.items() for m in metrics),
)
PAIR = ["task", "method", "loss", "weak", "strong"]
# Config keys that are never a variant: the seed (runs that differ in it are the seeds), and
# what does not change results (where files go, logging, which command ran).
NOT_VARIANTS = ("seed", *RUN_ONLY_KEYS)  # prefixes of the flattened "a.b.c" keys
# The selection rule that validates on ground truth: a comparison, never a weak-to-strong method.
ORACLE = "oracle_val"


def record(record: dict) -> dict:
    """One row per finished experiment (a ``results.json`` record): the pair, the seed, the
    three accuracies and PGR, and the optional metrics of ``OPTIONAL_MEANS``."""
    results = Results.from_dict(record)
    stage = results.metric
    row = {
        "task": results.task,
        "method": results.method,
        "loss": results.loss,
        "seed": results.seed,
        "weak": results.weak_model,
        "strong": results.strong_model,
        "n_test": results.n_test,
        "weak_params": float(results.config["weak"]["params"]),
        "strong_params": float(results.config["strong"]["params"]),
        **{f"{role}_acc": stage(role) for role in PGR_ROLES},
        **{f"{role}_auroc": stage(role, "auroc") for role in PGR_ROLES},
        "pgr": results.pgr(),
        "pgr_auroc": results.pgr(metric="auroc"),
        "pgr_status": results.pgr_status,
        # Which cached stages the gap came from: a paired difference needs both runs on the same.
        **{f"{role}_stage": results.stages[role].key if role in results.stages else "" for role in (WEAK, CEILING)},
        **{f"{role}_{m}": stage(role, m) for role, metrics in STAGE_EXTRAS.items() for m in metrics},
        "transfer_ece": stage(TRANSFER, "ece"),
        "agreement": stage(TRANSFER, "agreement"),
        "agreement_where_supervisor_wrong": stage(TRANSFER, "agreement_where_supervisor_wrong"),
        # Bootstrapping: the last rung is the strong model, beside the direct transfer.
        "bootstrap_acc": stage(BOOTSTRAP),
        "pgr_bootstrap": results.pgr(BOOTSTRAP),
    }
    for role in (r for r in results.stages if is_rung(r)):  # every intermediate rung, in order
        row[f"{role}_model"], row[f"{role}_acc"] = results.stages[role].model, stage(role)
    return row


def interval(values: pd.Series) -> tuple[float, float, float]:
    """Mean and Student-t 95% interval; the interval is NaN with fewer than two values."""
    values = values.dropna()
    mean = values.mean() if len(values) else math.nan
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def variant_columns(records: pd.DataFrame, configs: list[dict]) -> pd.DataFrame:
    """The config values that vary inside a (task, method, loss, weak, strong) group, other
    than the seed, as columns beside ``records``: what a sweep varied beyond the pair."""
    # Nested keys as "a.b.c" columns; a null setting as "null", a value like any other (pandas
    # would read it as missing, and length_buckets=8 beside null would pool as seeds).
    settings = pd.json_normalize(canonical(with_nulls_shown(configs))).set_axis(records.index)
    settings = settings[[c for c in settings.columns if not c.startswith(NOT_VARIANTS)]].astype(str)
    pair = records[PAIR].astype(str).agg("|".join, axis=1)
    varying = [c for c in settings.columns if (settings[c].groupby(pair).nunique() > 1).any()]
    if "select.name" in settings.columns and (settings["select.name"] == ORACLE).any() and "select.name" not in varying:
        varying.append("select.name")  # a rule that reads ground truth is always named, even alone
    records = records.join(settings[varying])
    # A weak model trained on other devices in other runs (paper_nlp_7b retrains its weak rungs
    # under FSDP) differs by more than float order: each run's layout is named, so one weak
    # model never shows two accuracies unexplained.
    layout = pd.Series([device_layout(c) for c in configs], index=records.index)
    if (layout.groupby(records[["task", "weak"]].astype(str).agg("|".join, axis=1)).nunique() > 1).any():
        records[LAYOUT] = layout
    return records


LAYOUT = "trainer.layout"


def device_layout(config: dict) -> str:
    """How a run's stages were spread over devices: strategy, devices x nodes, precision."""
    trainer = config.get("trainer", {})
    strategy = trainer.get("strategy", "auto")
    name = strategy.get("_target_", "?").rsplit(".", 1)[-1] if isinstance(strategy, dict) else str(strategy)
    return f"{name}, {trainer.get('devices', 1)} x {trainer.get('num_nodes', 1)}, {trainer.get('precision', '?')}"


def with_nulls_shown(value):
    if value is None:
        return "null"
    if isinstance(value, dict):
        return {k: with_nulls_shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [with_nulls_shown(v) for v in value]
    return value


def variants(table: pd.DataFrame) -> list[str]:
    """The variant columns of a table (dotted config keys)."""
    return [c for c in table.columns if "." in c]


def pair_status(group: pd.DataFrame) -> str:
    """Whether a pair's PGR is read, decided on its accuracies' means over seeds (not seed by
    seed): ``same size``, ``ceiling <= weak``, ``gap within noise`` or ``ok``."""
    if group["weak_params"].iloc[0] == group["strong_params"].iloc[0]:
        return "same size"
    return pgr_status(group["weak_acc"].mean(), group["ceiling_acc"].mean(), int(group["n_test"].min()))


def pair_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method, loss, variants, weak, strong): accuracies and PGR, means over seeds,
    the intervals of PGR and of the transfer's accuracy, and whether PGR is to be read."""
    rows = []
    keys = PAIR + variants(records)
    for pair, group in records.groupby(keys, sort=False, dropna=False):
        mean, low, high = interval(group["pgr"])
        _, acc_low, acc_high = interval(group["transfer_acc"])
        rows.append(
            {
                **dict(zip(keys, pair, strict=True)),
                "seeds": len(group),
                **{f"{role}_acc": group[f"{role}_acc"].mean() for role in PGR_ROLES},
                "transfer_acc_low": acc_low,
                "transfer_acc_high": acc_high,
                "pgr": mean,
                "pgr_low": low,
                "pgr_high": high,
                **{column: group[column].mean() for column in OPTIONAL_MEANS},
                **{
                    column: (group[column].mean() if column.endswith("_acc") else group[column].iloc[0])
                    for column in group.columns
                    if is_rung(column.split("_")[0])
                },
                "status": pair_status(group),
                "weak_params": group["weak_params"].iloc[0],
                "strong_params": group["strong_params"].iloc[0],
            }
        )
    table = pd.DataFrame(rows).sort_values(
        ["task", "method", "loss", *variants(records), "weak_params", "strong_params"]
    )
    return table.drop(columns=["weak_params", "strong_params"]).reset_index(drop=True)


def summary_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method, loss, variants): median PGR over the valid pairs of each seed, then
    mean and interval over seeds, with the pairs used and the pairs left out counted. A pair
    is valid when its ceiling beats its weak model by more than the test noise on the means
    over seeds: a pair is in or out for every seed alike."""
    rows = []
    keys = ["task", "method", "loss", *variants(records)]
    for values, group in records.groupby(keys, sort=True, dropna=False):
        status = group.groupby(["weak", "strong"]).apply(pair_status, include_groups=False)
        used = status[status == "ok"].index
        valid = group[group.set_index(["weak", "strong"]).index.isin(used)]
        mean, low, high = interval(valid.groupby("seed")["pgr"].median())
        rows.append(
            {
                **dict(zip(keys, values, strict=True)),
                "median_pgr": mean,
                "pgr_low": low,
                "pgr_high": high,
                "seeds": group["seed"].nunique(),
                "pairs_used": len(used),
                # Pairs (not runs) left out, each for the first reason that applies, on means over seeds.
                "pairs_left_out_same_size": int((status == "same size").sum()),
                "pairs_left_out_ceiling_le_weak": int((status == "ceiling <= weak").sum()),
                "pairs_left_out_gap_within_noise": int((status == "gap within noise").sum()),
                "median_pgr_bootstrap": valid.groupby("seed")["pgr_bootstrap"].median().mean(),
            }
        )
    return pd.DataFrame(rows)


def without_duplicates(results: list[dict]) -> list[dict]:
    """Each run once: two results of the same task, pair, method, settings and seed (a sweep
    rerun into a sibling folder) would count as two seeds and narrow the intervals. The first
    is kept, and a warning names the folders of the others."""
    kept: dict[str, dict] = {}
    for result in results:
        settings = pd.json_normalize(result["config"]).iloc[0].to_dict() if result.get("config") else {}
        same = {k: str(v) for k, v in settings.items() if not k.startswith(RUN_ONLY_KEYS)}
        key = json.dumps(
            [
                result["task"],
                result.get("method"),
                result["loss"],
                result["weak_model"],
                result["strong_model"],
                result["seed"],
                same,
            ],
            sort_keys=True,
        )
        if key in kept:
            log.warning(
                "%s repeats the run in %s (same task, pair, method, settings and seed): counted once",
                folder_of(result),
                folder_of(kept[key]),
            )
            continue
        kept[key] = result
    return list(kept.values())


def folder_of(result: dict) -> str:
    return str((result.get("config") or {}).get("paths", {}).get("output_dir", "a run without paths"))


def records_table(results: list[dict]) -> pd.DataFrame:
    """One row per distinct run of a list of ``results.json`` contents, with its variant columns."""
    results = without_duplicates(results)
    records = pd.DataFrame([record(r) for r in results])
    return variant_columns(records, [r["config"] for r in results])


def tables(results: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-pair and the summary table of a list of ``results.json`` contents."""
    records = records_table(results)
    return pair_table(records), summary_table(records)
