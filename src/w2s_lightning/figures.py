"""The report's figures: the paper's accuracy plot per task and method, and median PGR bars."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt  # picks a file-only backend by itself where there is no display
import pandas as pd

from w2s_lightning.tables import variants


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
        task, rest = values[0], [f"{k}={v}" for k, v in zip(keys[1:], values[1:], strict=True)]
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
        ax.annotate(
            f"weak {weak}", (0.01, level), xycoords=("axes fraction", "data"), fontsize=7, color="grey", va="bottom"
        )
        for j, loss in enumerate(losses):
            line = rows[(rows["weak"] == weak) & (rows["loss"] == loss)]
            if line.empty:
                continue
            line = line.assign(x=line["strong"].map(ceilings) + (j - (len(losses) - 1) / 2) * step).sort_values("x")
            errors = [
                (line["transfer_acc"] - line["transfer_acc_low"]).fillna(0),
                (line["transfer_acc_high"] - line["transfer_acc"]).fillna(0),
            ]
            color = plt.get_cmap(LOSS_COLORMAPS[j % len(LOSS_COLORMAPS)])(0.45 + 0.5 * (i + 1) / len(weak_models))
            ax.errorbar(
                line["x"],
                line["transfer_acc"],
                yerr=errors,
                color=color,
                marker=LOSS_MARKERS[j % 8],
                capsize=3,
                label=f"{loss}, weak {weak}",
            )
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
    # A colour per bar of a task (tab10 repeats after ten), and the legend beside the axes, where
    # a method zoo's dozen entries cover no bars.
    colors = plt.get_cmap("tab20" if len(variants) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(3.5 + 1.6 * len(tasks), 4), layout="constrained")
    for i, variant in enumerate(variants):
        rows = summary[summary["variant"] == variant].set_index("task").reindex(tasks)
        errors = [(rows["median_pgr"] - rows["pgr_low"]).fillna(0), (rows["pgr_high"] - rows["median_pgr"]).fillna(0)]
        positions = [t + i * width for t in range(len(tasks))]
        ax.bar(positions, rows["median_pgr"], width, yerr=errors, capsize=3, label=variant, color=colors(i))
        for x, value in zip(positions, rows["median_pgr"], strict=True):
            if pd.isna(value):  # no pair with a defined PGR: say so rather than show an empty slot
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    centres = [t + width * (len(variants) - 1) / 2 for t in range(len(tasks))]
    ax.set_xticks(centres, tasks)
    # A slot of width 1 per task: autoscaling ignores NaN bars, which left a last task without a
    # PGR (and its "n/a") outside the axes.
    ax.set_xlim(centres[0] - 0.5, centres[-1] + 0.5)
    ax.set_ylabel("median PGR over pairs")
    ax.set_title("Performance gap recovered")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return fig


def plot_transfer_vs_ceiling(pairs: pd.DataFrame) -> plt.Figure:
    """Across tasks: each (task, pair)'s transfer accuracy against its ceiling accuracy, one
    colour and marker per loss (and method), bars for the 95% interval over seeds; grey crosses
    are the weak models' own accuracies. On the diagonal a transfer matches the ceiling (PGR 1);
    at its grey cross it matches the weak model (PGR 0)."""
    pairs = with_variant(pairs)
    fig, ax = plt.subplots(figsize=(6.5, 6))
    ax.scatter(pairs["ceiling_acc"], pairs["weak_acc"], marker="x", color="grey", label="weak model", zorder=1)
    for i, (variant, rows) in enumerate(sorted(pairs.groupby("variant"), key=lambda item: item[0])):
        errors = [
            (rows["transfer_acc"] - rows["transfer_acc_low"]).fillna(0),
            (rows["transfer_acc_high"] - rows["transfer_acc"]).fillna(0),
        ]
        ax.errorbar(
            rows["ceiling_acc"],
            rows["transfer_acc"],
            yerr=errors,
            linestyle="none",
            marker=LOSS_MARKERS[i % len(LOSS_MARKERS)],
            capsize=2,
            label=variant,
        )
    for task, rows in pairs.groupby("task"):
        ax.annotate(
            task,
            (rows["ceiling_acc"].mean(), rows["transfer_acc"].max()),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    low = min(pairs[["weak_acc", "transfer_acc", "ceiling_acc"]].min().min(), 0.5) - 0.02
    ax.plot([low, 1], [low, 1], "k-", linewidth=0.8, label="ceiling (PGR 1)")
    ax.set_xlabel("ground-truth ceiling test accuracy")
    ax.set_ylabel("weak-to-strong transfer test accuracy")
    ax.set_title("Transfer against ceiling, per task")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
