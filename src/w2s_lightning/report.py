"""PGR tables and paper-style figures from a sweep's finished runs.

    python run.py command=report                                    # the newest multirun folder
    python run.py command=report report.dir=outputs/multiruns/<time>
    python -m w2s_lightning.report outputs/multiruns/<time>         # the same, without Hydra
    python run.py command=report report.wandb_group=sweep-<time>    # from W&B instead of files

Summaries follow the paper and the reference notebook: per task, method and loss, the median PGR
over (weak, strong) pairs, leaving out same-size pairs, pairs whose ceiling does not beat the
weak model, and pairs whose ceiling - weak gap is within the test set's noise (two standard
errors of a difference of two accuracies, ``metrics.gap_noise``); all three are counted in the
table. With several seeds the median is taken per seed and the table gives its mean and a
Student-t 95% interval over seeds. The arithmetic is in ``tables.py``, the plots in
``figures.py``; this module reads the runs and writes the report.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from omegaconf import DictConfig

from w2s_lightning import tracking
from w2s_lightning.across_tasks import paired_differences, task_medians
from w2s_lightning.errors import ConfigError, W2SError
from w2s_lightning.figures import accuracy_figures, plot_accuracy, plot_pgr, plot_transfer_vs_ceiling
from w2s_lightning.tables import pair_table, records_table, summary_table

log = logging.getLogger(__name__)


def read_folder(folder: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """The ``results.json`` and ``skipped.json`` contents under a (multi)run folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            f"report.dir={folder} is not a folder; pass a multirun folder such as outputs/multiruns/<time>."
        )
    results = [json.loads(p.read_text()) for p in sorted(folder.rglob("results.json"))]
    skipped = [json.loads(p.read_text()) for p in sorted(folder.rglob("skipped.json"))]
    if not results:
        raise ConfigError(
            f"no results.json under {folder}: run a sweep first (python run.py -m ...), "
            "or point report.dir at the folder it wrote."
        )
    return results, skipped


def _markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, floatfmt=".3f")


def models_section(results: list[dict]) -> str:
    """Every model of the runs, smallest first, with what its config says about it (``about``)."""
    models: dict[str, dict] = {}
    for cfg in (c for r in results for c in (r["config"]["weak"], r["config"]["strong"])):
        if cfg.get("about") or cfg["name"] not in models:  # runs from before `about` existed say nothing
            models[cfg["name"]] = cfg
    lines = [
        f"- {m['name']} ({m['params'] / 1e6:,.0f}M parameters)" + (f": {m['about']}" if m.get("about") else "")
        for m in sorted(models.values(), key=lambda m: m["params"])
    ]
    return "## Models\n\n" + "\n".join(lines)


def build(results: list[dict], skipped: list[dict], out_dir: str | os.PathLike) -> dict:
    """Write the tables (CSV, Markdown), figures (PNG) and accounting into ``out_dir``."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    records = records_table(results)
    pairs, summary = pair_table(records), summary_table(records)
    medians = task_medians(summary)
    differences, tests = paired_differences(records)
    counts = accounting(results, skipped)
    for name, table in [("pairs", pairs), ("summary", summary), ("across_tasks", medians),
                        ("differences", differences), ("tests", tests)]:  # fmt: skip
        table.to_csv(out / f"{name}.csv", index=False)
    (out / "accounting.json").write_text(json.dumps(counts, indent=2))
    drawn = {stem: plot_accuracy(rows, title) for stem, (title, rows) in accuracy_figures(pairs).items()}
    drawn["pgr"] = plot_pgr(summary)
    if pairs["task"].nunique() > 1:
        drawn["transfer_vs_ceiling"] = plot_transfer_vs_ceiling(pairs)
    figures = []
    for name, fig in drawn.items():
        figures.append(out / "figures" / f"{name}.png")
        fig.savefig(figures[-1], dpi=150)
        plt.close(fig)
    markdown = "\n\n".join(
        [
            "# Weak-to-strong report",
            "## Median PGR per task and loss\n\n" + _markdown(summary),
            ACROSS_TASKS + _markdown(medians),
            PAIRED + (_markdown(tests) + "\n\n" + _markdown(differences) if len(tests) else "No two methods to pair."),
            models_section(results),
            "## Per pair (means over seeds)\n\n" + _markdown(pairs),
            "## Stages\n\n" + "\n".join(f"- {k.replace('_', ' ')}: {v}" for k, v in counts.items()),
            "## Figures\n\n" + "\n".join(f"![{f.stem}](figures/{f.name})" for f in figures),
        ]
    )
    (out / "report.md").write_text(markdown + "\n")
    (out / "summary.md").write_text(_markdown(summary) + "\n")
    (out / "pairs.md").write_text(_markdown(pairs) + "\n")
    log.info("report written to %s", out)
    return {
        "pairs": pairs,
        "summary": summary,
        "across_tasks": medians,
        "differences": differences,
        "tests": tests,
        "accounting": counts,
        "figures": figures,
        "out_dir": out,
    }


ACROSS_TASKS = (
    "## Across tasks\n\nPer method and loss: the median over tasks of each task's PGR (above), a 95% "
    "percentile-bootstrap interval resampling tasks, and the share of tasks with PGR > 0 (Clopper-Pearson "
    "interval). Tasks without a pair whose PGR is read are left out and counted.\n\n"
)
PAIRED = (
    "## Paired differences\n\nPGR of a loss minus xent's within a method, and of a method with xent minus "
    "direct with xent, on the same (task, pair, seed): per task the mean and Student-t interval over seeds; "
    "across tasks the median and a two-sided Wilcoxon signed-rank test of the per-task means.\n\n"
)


def accounting(results: list[dict], skipped: list[dict]) -> dict:
    """How many stages the sweep trained and reused: the check that each ground-truth model
    (task, model, seed) was trained once however many pairs and losses used it."""
    used = {"gt": set(), "transfer": set()}
    trained = {"gt": Counter(), "transfer": Counter()}  # jobs that trained each stage: one, with a working cache
    for result in results:
        for stage in result["stages"].values():
            kind = stage["key"].split("-")[0]  # the cache folder's prefix: gt, transfer, generative, ...
            if kind in used:
                used[kind].add(stage["key"])
                if stage.get("reused") is False:
                    trained[kind][stage["key"]] += 1
    models = {(r["task"], r[f"{role}_model"], r["seed"]) for r in results for role in ("weak", "strong")}
    return {
        "experiments": len(results),
        "skipped_jobs": len(skipped),
        "ground_truth_models": len(models),
        "ground_truth_stages_used": len(used["gt"]),
        "ground_truth_stages_trained_here": len(trained["gt"]),
        "transfer_stages_used": len(used["transfer"]),
        "transfer_stages_trained_here": len(trained["transfer"]),
        "stages_trained_by_several_jobs": sorted(k for counts in trained.values() for k, n in counts.items() if n > 1),
    }


def newest_multirun(log_dir: str | os.PathLike) -> Path:
    folders = sorted(p for p in Path(log_dir, "multiruns").glob("*") if p.is_dir())
    if not folders:
        raise ConfigError(
            f"no multirun folders under {Path(log_dir, 'multiruns')}; run a sweep first "
            "(python run.py -m ...) or set report.dir=<folder>."
        )
    return folders[-1]


def run(cfg: DictConfig) -> dict:
    """``python run.py command=report``: read files (or W&B), write the report, log it to W&B."""
    if cfg.report.wandb_group:
        results = tracking.read_summaries(cfg.logger.project, cfg.logger.entity, cfg.report.wandb_group)
        return _report(results, [], cfg.report.out_dir or Path(cfg.paths.output_dir) / "report", cfg.logger.mode)
    folder = Path(cfg.report.dir) if cfg.report.dir else newest_multirun(cfg.paths.log_dir)
    return _report(*read_folder(folder), cfg.report.out_dir or folder / "report", cfg.logger.mode)


def _report(results: list[dict], skipped: list[dict], out_dir: str | os.PathLike, wandb_mode: str) -> dict:
    report = build(results, skipped, out_dir)
    tracking.log_report(report, results, wandb_mode)
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
        + (
            f"warning: {len(counts['stages_trained_by_several_jobs'])} stage(s) were trained by more than one job "
            "(a stage cache on storage without working file locks?); accounting.json lists them\n"
            if counts["stages_trained_by_several_jobs"]
            else ""
        )
        + f"report: {report['out_dir'] / 'report.md'}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="PGR tables and figures from a multirun folder.")
    parser.add_argument("dir", help="a multirun folder holding results.json files")
    parser.add_argument("--out", help="where to write the report (default: DIR/report)")
    parser.add_argument(
        "--wandb-mode",
        default=os.environ.get("WANDB_MODE", "auto"),
        choices=["auto", "online", "offline", "disabled"],
        help="log the tables and figures to the sweep's W&B group (default: auto)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _report(*read_folder(args.dir), args.out or Path(args.dir) / "report", args.wandb_mode)
    except W2SError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
