"""PGR tables and paper-style figures from a sweep's finished runs.

    python run.py stage=report                                  # the newest multirun folder
    python run.py stage=report report.dir=outputs/multiruns/<time>
    python -m w2s_lightning.report outputs/multiruns/<time>     # the same, without Hydra
    python run.py stage=report report.wandb_group=sweep-<time>  # from W&B instead of files

Summaries follow the paper and the reference notebook: per task, method and loss, the median PGR
over (weak, strong) pairs, leaving out same-size pairs, pairs whose ceiling does not beat the
weak model, and pairs whose ceiling - weak gap is within the test set's noise (two standard
errors of a difference of two accuracies, ``metrics.gap_noise``); all three are counted in the
table. With several seeds the median is taken per seed and the table gives its mean and a
Student-t 95% interval over seeds.

Every other config value that varies inside one (task, method, loss, weak, strong) group of a
sweep, such as ``loss.fn.aux_coef`` or ``train.epochs``, becomes a column of its own, so runs
that differ in it are never averaged together nor counted as seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
from pathlib import Path

import matplotlib.pyplot as plt  # picks a file-only backend by itself where there is no display
import pandas as pd
import wandb
from omegaconf import DictConfig
from scipy import stats

from w2s_lightning import tracking
from w2s_lightning.errors import ConfigError, W2SError
from w2s_lightning.metrics import pgr, pgr_status

log = logging.getLogger(__name__)
ROLES = ("weak", "transfer", "ceiling")
# Stage metrics copied into a record as <role>_<metric> (NaN where a stage lacks one).
STAGE_EXTRAS = {"weak": ("val_ece", "label_ece", "label_margin"), "ceiling": ("val_ece", "val_margin"),
                "transfer": ("val_margin",)}
# Per-pair means shown beside PGR (NaN where a run has no such stage or metric).
OPTIONAL_MEANS = ("pgr_auroc", "transfer_ece", "agreement", "agreement_where_weak_wrong", "bootstrap_acc",
                  "pgr_bootstrap", *(f"{role}_{m}" for role, metrics in STAGE_EXTRAS.items() for m in metrics))
PAIR = ["task", "method", "loss", "weak", "strong"]
# Config keys that are never a variant: the seed (runs that differ in it are the seeds), and
# what does not change results (where files go, logging, which command ran).
NOT_VARIANTS = ("seed", "stage", "paths.", "logger.", "report.")


# ---------------------------------------------------------------- reading runs


def read_folder(folder: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """The ``results.json`` and ``skipped.json`` contents under a (multi)run folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"report.dir={folder} is not a folder; pass a multirun folder such as outputs/multiruns/<time>.")
    results = [json.loads(p.read_text()) for p in sorted(folder.rglob("results.json"))]
    skipped = [json.loads(p.read_text()) for p in sorted(folder.rglob("skipped.json"))]
    if not results:
        raise ConfigError(f"no results.json under {folder}: run a sweep first (python run.py -m ...), "
                          "or point report.dir at the folder it wrote.")
    return results, skipped


def read_wandb(project: str, entity: str | None, group: str) -> list[dict]:
    """The summary runs of one W&B group, in the shape of ``results.json``."""
    path = f"{entity}/{project}" if entity else project
    runs = wandb.Api().runs(path, filters={"group": group, "jobType": "summary"})
    results = []
    for run in runs:
        summary, config = dict(run.summary), dict(run.config)
        if "n_test" not in summary:  # the noise rule needs it; runs before it was logged lack it
            raise ConfigError(f"W&B run {run.name} has no n_test in its summary (it predates the noise rule); "
                              "report its sweep from the results.json files: report.dir=<multirun folder>.")
        roles = [r for r in (*ROLES, "bootstrap") if f"{r}/acc" in summary]
        results.append({
            "task": config["task"]["name"], "loss": config["loss"]["name"], "seed": config["seed"],
            "method": summary.get("method", "baseline"),
            "weak_model": config["weak"]["name"], "strong_model": config["strong"]["name"],
            "stages": {role: {k: summary.get(f"{role}/{k}", math.nan)
                              for k in ("acc", "auroc", "ece", "val_ece", "val_margin", "key", "reused")}
                       for role in roles},
            "n_test": summary["n_test"],
            "config": config,
        })
    if not results:
        raise ConfigError(f"W&B has no summary runs in group {group!r} of project {path!r}; check the name "
                          "on the dashboard (groups are sweep-<multirun folder>).")
    return results


def record(results: dict) -> dict:
    """One row per finished experiment: the pair, the seed, the three accuracies and PGR."""
    stages, config = results["stages"], results["config"]
    row = {
        "task": results["task"], "method": results.get("method", "baseline"), "loss": results["loss"],
        "seed": results["seed"],
        "weak": results["weak_model"], "strong": results["strong_model"],
        "weak_params": float(config["weak"]["params"]), "strong_params": float(config["strong"]["params"]),
        **{f"{role}_acc": stages[role]["acc"] for role in ROLES},
        **{f"{role}_auroc": stages[role]["auroc"] for role in ROLES},
    }
    row["pgr"] = pgr(row["weak_acc"], row["transfer_acc"], row["ceiling_acc"])
    row["pgr_auroc"] = pgr(row["weak_auroc"], row["transfer_auroc"], row["ceiling_auroc"])
    row["pgr_status"] = pgr_status(row["weak_acc"], row["ceiling_acc"], results["n_test"])
    for role, metrics in STAGE_EXTRAS.items():
        row.update({f"{role}_{m}": stages[role].get(m, math.nan) for m in metrics})
    row["transfer_ece"] = stages["transfer"].get("ece", math.nan)
    row["agreement"] = stages["transfer"].get("agreement", math.nan)
    row["agreement_where_weak_wrong"] = stages["transfer"].get("agreement_where_supervisor_wrong", math.nan)
    # Bootstrapping (chain=...): the last rung is the strong model, beside the direct transfer.
    for role in (r for r in stages if r.startswith("rung")):  # every intermediate rung, in order
        row[f"{role}_model"], row[f"{role}_acc"] = stages[role]["model"], stages[role]["acc"]
    row["bootstrap_acc"] = stages.get("bootstrap", {}).get("acc", math.nan)
    row["pgr_bootstrap"] = pgr(row["weak_acc"], row["bootstrap_acc"], row["ceiling_acc"])
    return row


# ---------------------------------------------------------------- tables


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
    settings = pd.json_normalize(configs).set_axis(records.index)  # nested keys as "a.b.c" columns
    settings = settings[[c for c in settings.columns if not c.startswith(NOT_VARIANTS)]].astype(str)
    pair = records[PAIR].astype(str).agg("|".join, axis=1)
    varying = [c for c in settings.columns if (settings[c].groupby(pair).nunique() > 1).any()]
    return records.join(settings[varying])


def variants(table: pd.DataFrame) -> list[str]:
    """The variant columns of a table (dotted config keys)."""
    return [c for c in table.columns if "." in c]


def _status(group: pd.DataFrame) -> str:
    if group["weak_params"].iloc[0] == group["strong_params"].iloc[0]:
        return "same size"
    flagged = group["pgr_status"][group["pgr_status"] != "ok"]
    return "; ".join(f"{s} ({n}/{len(group)} seeds)" for s, n in flagged.value_counts().items()) or "ok"


def pair_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method, loss, variants, weak, strong): accuracies and PGR, means over seeds,
    the intervals of PGR and of the transfer's accuracy, and whether PGR is to be read."""
    rows = []
    keys = PAIR + variants(records)
    for pair, group in records.groupby(keys, sort=False, dropna=False):
        mean, low, high = interval(group["pgr"])
        _, acc_low, acc_high = interval(group["transfer_acc"])
        rows.append({
            **dict(zip(keys, pair)), "seeds": len(group),
            **{f"{role}_acc": group[f"{role}_acc"].mean() for role in ROLES},
            "transfer_acc_low": acc_low, "transfer_acc_high": acc_high,
            "pgr": mean, "pgr_low": low, "pgr_high": high,
            **{column: group[column].mean() for column in OPTIONAL_MEANS},
            **{column: (group[column].mean() if column.endswith("_acc") else group[column].iloc[0])
               for column in group.columns if column.startswith("rung")},
            "status": _status(group),
            "weak_params": group["weak_params"].iloc[0], "strong_params": group["strong_params"].iloc[0],
        })
    table = pd.DataFrame(rows).sort_values(["task", "method", "loss", *variants(records), "weak_params",
                                            "strong_params"])
    return table.drop(columns=["weak_params", "strong_params"]).reset_index(drop=True)


def summary_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method, loss, variants): median PGR over the valid pairs of each seed, then
    mean and interval over seeds, with the pairs used and the runs left out counted."""
    rows = []
    keys = ["task", "method", "loss", *variants(records)]
    for values, group in records.groupby(keys, sort=True, dropna=False):
        same_size = group["weak_params"] == group["strong_params"]
        valid = group[~same_size & (group["pgr_status"] == "ok")]
        mean, low, high = interval(valid.groupby("seed")["pgr"].median())
        rows.append({
            **dict(zip(keys, values)), "median_pgr": mean, "pgr_low": low, "pgr_high": high,
            "seeds": group["seed"].nunique(),
            "pairs_used": valid[["weak", "strong"]].drop_duplicates().shape[0],
            "same_size_left_out": group.loc[same_size, ["weak", "strong"]].drop_duplicates().shape[0],
            "ceiling_le_weak_left_out": int((~same_size & (group["pgr_status"] == "ceiling <= weak")).sum()),
            "gap_within_noise_left_out": int((~same_size & (group["pgr_status"] == "gap within noise")).sum()),
            "median_pgr_bootstrap": valid.groupby("seed")["pgr_bootstrap"].median().mean(),
        })
    return pd.DataFrame(rows)


def tables(results: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-pair and the summary table of a list of ``results.json`` contents."""
    records = pd.DataFrame([record(r) for r in results])
    records = variant_columns(records, [r["config"] for r in results])
    return pair_table(records), summary_table(records)


def accounting(results: list[dict], skipped: list[dict]) -> dict:
    """How many stages the sweep trained and reused: the check that each ground-truth model
    (task, model, seed) was trained once however many pairs and losses used it."""
    used = {"gt": set(), "transfer": set()}
    trained = {"gt": set(), "transfer": set()}
    for result in results:
        for role, stage in result["stages"].items():
            kind = "gt" if role in ("weak", "ceiling") else "transfer"  # rungs and bootstrap learn from labels
            used[kind].add(stage["key"])
            if stage.get("reused") is False:
                trained[kind].add(stage["key"])
    models = {(r["task"], r[f"{role}_model"], r["seed"]) for r in results for role in ("weak", "strong")}
    return {
        "experiments": len(results),
        "skipped_jobs": len(skipped),
        "ground_truth_models": len(models),
        "ground_truth_stages_used": len(used["gt"]),
        "ground_truth_stages_trained_here": len(trained["gt"]),
        "transfer_stages_used": len(used["transfer"]),
        "transfer_stages_trained_here": len(trained["transfer"]),
    }


# ---------------------------------------------------------------- figures


def with_variant(table: pd.DataFrame) -> pd.DataFrame:
    """What a bar stands for: the loss, prefixed by the method when several are shown, and
    followed by the variant values."""
    parts = [table["method"]] if table["method"].nunique() > 1 else []
    parts += [table["loss"], *(column + "=" + table[column].astype(str) for column in variants(table))]
    return table.assign(variant=pd.concat(parts, axis=1).agg(" ".join, axis=1))


# Each loss has a colour family and a marker; each weak model a shade within the family.
LOSS_COLORMAPS = ("Blues", "Oranges", "Greens", "Purples", "Reds", "Greys")
LOSS_MARKERS = "osD^vPX*"


def accuracy_figures(pairs: pd.DataFrame) -> dict[str, tuple[str, pd.DataFrame]]:
    """One accuracy figure per task, method and variant values, since each has weak models and
    ceilings of its own: {file stem: (title, pair rows)}. A task with one such group keeps the
    plain name ``<task>_accuracy``."""
    keys = ["task", "method", *variants(pairs)]
    groups = list(pairs.groupby(keys, sort=True, dropna=False))
    per_task = pd.Series([values[0] for values, _ in groups]).value_counts()
    figures = {}
    for values, rows in groups:
        task, rest = values[0], [f"{k}={v}" for k, v in zip(keys[1:], values[1:])]
        stem = task if per_task[task] == 1 else "_".join([task, *rest])
        figures[re.sub(r"[^\w.=+-]", "_", stem) + "_accuracy"] = (f"{task}: {', '.join(rest)}", rows)
    return figures


def plot_accuracy(rows: pd.DataFrame, title: str) -> plt.Figure:
    """The paper's NLP figure: transfer test accuracy against the strong model's ceiling
    accuracy, one line per weak model and loss (a colour family and a marker per loss, a shade
    per weak model), with bars for the 95% interval over seeds. The black line is the ceiling
    itself, and a grey dotted line each weak model's own accuracy (PGR 0)."""
    ceilings = rows.groupby("strong")["ceiling_acc"].mean().sort_values()
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot(ceilings.values, ceilings.values, "k-o", label="ground truth (ceiling)")
    losses = sorted(rows["loss"].unique())
    weak_models = list(dict.fromkeys(rows.sort_values("weak_acc")["weak"]))
    # Losses sit side by side around each strong model, so their bars do not hide each other.
    step = 0.015 * max(ceilings.max() - ceilings.min(), 0.2)
    for i, weak in enumerate(weak_models):
        level = rows.loc[rows["weak"] == weak, "weak_acc"].mean()
        ax.axhline(level, color="grey", linestyle=(0, (1, 3)), linewidth=1)
        ax.annotate(f"weak {weak}", (0.01, level), xycoords=("axes fraction", "data"), fontsize=7, color="grey",
                    va="bottom")
        for j, loss in enumerate(losses):
            line = rows[(rows["weak"] == weak) & (rows["loss"] == loss)]
            if line.empty:
                continue
            line = line.assign(x=line["strong"].map(ceilings) + (j - (len(losses) - 1) / 2) * step).sort_values("x")
            errors = [(line["transfer_acc"] - line["transfer_acc_low"]).fillna(0),
                      (line["transfer_acc_high"] - line["transfer_acc"]).fillna(0)]
            color = plt.get_cmap(LOSS_COLORMAPS[j % len(LOSS_COLORMAPS)])(0.45 + 0.5 * (i + 1) / len(weak_models))
            ax.errorbar(line["x"], line["transfer_acc"], yerr=errors, color=color, marker=LOSS_MARKERS[j % 8],
                        capsize=3, label=f"{loss}, weak {weak}")
    ax.set_xticks(ceilings.values, [f"{m}\n{a:.3f}" for m, a in ceilings.items()], rotation=30, fontsize=8)
    ax.set_xlabel("strong model (ground-truth ceiling accuracy)")
    ax.set_ylabel("test accuracy" + (" (bars: 95% interval over seeds)" if rows["seeds"].max() > 1 else ""))
    ax.set_title(f"{title}: weak-to-strong transfer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_pgr(summary: pd.DataFrame) -> plt.Figure:
    """Median PGR per task, one bar per loss (and method), with the 95% interval over seeds."""
    summary = with_variant(summary)
    tasks, variants = sorted(summary["task"].unique()), sorted(summary["variant"].unique())
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(tasks), 4))
    for i, variant in enumerate(variants):
        rows = summary[summary["variant"] == variant].set_index("task").reindex(tasks)
        errors = [(rows["median_pgr"] - rows["pgr_low"]).fillna(0), (rows["pgr_high"] - rows["median_pgr"]).fillna(0)]
        positions = [t + i * width for t in range(len(tasks))]
        ax.bar(positions, rows["median_pgr"], width, yerr=errors, capsize=3, label=variant)
        for x, value in zip(positions, rows["median_pgr"]):
            if pd.isna(value):  # no pair with a defined PGR: say so rather than show an empty slot
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks([t + width * (len(variants) - 1) / 2 for t in range(len(tasks))], tasks)
    ax.set_ylabel("median PGR over pairs")
    ax.set_title("Performance gap recovered")
    ax.legend()
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- writing


def _markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, floatfmt=".3f")


def build(results: list[dict], skipped: list[dict], out_dir: str | os.PathLike) -> dict:
    """Write the tables (CSV, Markdown), figures (PNG) and accounting into ``out_dir``."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    pairs, summary = tables(results)
    counts = accounting(results, skipped)
    pairs.to_csv(out / "pairs.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    (out / "accounting.json").write_text(json.dumps(counts, indent=2))
    drawn = {stem: plot_accuracy(rows, title) for stem, (title, rows) in accuracy_figures(pairs).items()}
    drawn["pgr"] = plot_pgr(summary)
    figures = []
    for name, fig in drawn.items():
        figures.append(out / "figures" / f"{name}.png")
        fig.savefig(figures[-1], dpi=150)
        plt.close(fig)
    markdown = "\n\n".join([
        "# Weak-to-strong report",
        "## Median PGR per task and loss\n\n" + _markdown(summary),
        "## Per pair (means over seeds)\n\n" + _markdown(pairs),
        "## Stages\n\n" + "\n".join(f"- {k.replace('_', ' ')}: {v}" for k, v in counts.items()),
        "## Figures\n\n" + "\n".join(f"![{f.stem}](figures/{f.name})" for f in figures),
    ])
    (out / "report.md").write_text(markdown + "\n")
    (out / "summary.md").write_text(_markdown(summary) + "\n")
    (out / "pairs.md").write_text(_markdown(pairs) + "\n")
    log.info("report written to %s", out)
    return {"pairs": pairs, "summary": summary, "accounting": counts, "figures": figures, "out_dir": out}


def log_to_wandb(report: dict, results: list[dict], mode: str) -> None:
    """The report's tables and figures as one ``job_type=report`` run in the sweep's group."""
    mode = tracking.resolve_mode(mode)
    if mode == "disabled":
        return
    logger_cfg = results[0]["config"]["logger"]
    run = wandb.init(
        project=logger_cfg["project"], entity=logger_cfg["entity"], group=logger_cfg["group"],
        job_type="report", name=f"{logger_cfg['group']}/report", mode=mode, dir=str(report["out_dir"]),
        reinit="finish_previous",
    )
    run.log({
        "report/summary": wandb.Table(dataframe=report["summary"]),
        "report/pairs": wandb.Table(dataframe=report["pairs"]),
        **{f"report/{f.stem}": wandb.Image(str(f)) for f in report["figures"]},
    })
    run.summary.update(report["accounting"])
    run.finish()


def newest_multirun(log_dir: str | os.PathLike) -> Path:
    folders = sorted(p for p in Path(log_dir, "multiruns").glob("*") if p.is_dir())
    if not folders:
        raise ConfigError(f"no multirun folders under {Path(log_dir, 'multiruns')}; run a sweep first "
                          "(python run.py -m ...) or set report.dir=<folder>.")
    return folders[-1]


def run(cfg: DictConfig) -> dict:
    """``python run.py stage=report``: read files (or W&B), write the report, log it to W&B."""
    if cfg.report.wandb_group:
        results = read_wandb(cfg.logger.project, cfg.logger.entity, cfg.report.wandb_group)
        return _report(results, [], cfg.report.out_dir or Path(cfg.paths.output_dir) / "report", cfg.logger.mode)
    folder = Path(cfg.report.dir) if cfg.report.dir else newest_multirun(cfg.paths.log_dir)
    return _report(*read_folder(folder), cfg.report.out_dir or folder / "report", cfg.logger.mode)


def _report(results: list[dict], skipped: list[dict], out_dir: str | os.PathLike, wandb_mode: str) -> dict:
    report = build(results, skipped, out_dir)
    log_to_wandb(report, results, wandb_mode)
    print(_console(report))
    return report


def _console(report: dict) -> str:
    counts = report["accounting"]
    return (
        f"\n{_markdown(report['summary'])}\n\n"
        f"{counts['experiments']} experiments ({counts['skipped_jobs']} jobs skipped: pairs outside the ladder); "
        f"ground-truth stages: {counts['ground_truth_stages_used']} used, "
        f"{counts['ground_truth_stages_trained_here']} trained in this sweep; "
        f"transfer stages: {counts['transfer_stages_used']} used, "
        f"{counts['transfer_stages_trained_here']} trained in this sweep\n"
        f"report: {report['out_dir'] / 'report.md'}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="PGR tables and figures from a multirun folder.")
    parser.add_argument("dir", help="a multirun folder holding results.json files")
    parser.add_argument("--out", help="where to write the report (default: DIR/report)")
    parser.add_argument("--wandb-mode", default=os.environ.get("WANDB_MODE", "auto"),
                        choices=["auto", "online", "offline", "disabled"],
                        help="log the tables and figures to the sweep's W&B group (default: auto)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _report(*read_folder(args.dir), args.out or Path(args.dir) / "report", args.wandb_mode)
    except W2SError as err:
        raise SystemExit(f"error: {err}") from None

if __name__ == "__main__":
    main()
