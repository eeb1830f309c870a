"""docs/tasks.md: what every offline task looks like at the offline budget, and whether a
weak-to-strong experiment on it can measure anything.

Per task: rows per split after the cut, class balance (before balancing, where a task
balances), tokens per example under MPNet's tokenizer (mean and 95th percentile; both texts
of a reward-modelling pair), the majority-class rate, the time to format and tokenise the
splits, and the ground-truth stages of the weak (minilm_l3) and ceiling (mpnet_base) models:
accuracy and AUROC on **validation** (test beside it, never used to choose), one seed. A PGR
is *measurable* when, on validation, the weak model is clearly above chance (its accuracy
above the majority rate, and its AUROC above 0.5, by two standard errors) and the
ceiling - weak gap is above ``metrics.gap_noise``.

    python scripts/task_table.py                  # train what the cache lacks; json + docs/tasks.md
    python scripts/task_table.py --tasks sst2,cola
    python scripts/task_table.py --render         # docs/tasks.md from docs/results/tasks/*.json alone
    python scripts/task_table.py --weak minilm_l6 # another weak model: results/tasks_minilm_l6/, its own table

``--docs DIR`` writes DIR/results/tasks/*.json and the table in DIR/tasks.md instead.

The stages are the pipeline's own ground-truth stages (same cache keys), so an experiment on
these sizes later reuses them. Keep the cache outside the work tree (W2S_CACHE_DIR).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

import w2s_lightning.config  # noqa: F401  (registers the schemas and resolvers conf/ uses)
from w2s_lightning import methods, parallel, preflight, tasks, threads
from w2s_lightning.data import tokenize
from w2s_lightning.metrics import gap_noise
from w2s_lightning.models import load_tokenizer
from w2s_lightning.roles import CEILING, WEAK
from w2s_lightning.runner import StageRunner

ROOT = Path(__file__).resolve().parents[1]
WEAK_MODEL = "minilm_l3"
TASKS = [
    "sst2",
    "sciq",
    "boolq",
    "cola",
    "wic",
    "ethics_deontology",
    "ethics_virtue",
    "ethics_utilitarianism",
    "anli_r2",
    "tweet_eval_sentiment",
    "piqa",
    "social_i_qa",
    "hellaswag",
    "dream",
    "quail",
    "multirc",
    "chess",
    "hh_harmless",
    "hh_helpful",
    "hh",
]
# The offline budget (halves of 500), a validation split large enough to tell a gap from noise,
# and the offline zoo's clearest encoder gap.
SIZES = [
    "+budget=cpu",
    "task.n_train=1000",
    "task.n_val=250",
    "task.n_test=1000",
    f"model@weak={WEAK_MODEL}",
    "model@strong=mpnet_base",
]
# Long texts are cut (on the left: the question and the answer stay) to fit the hour. Reward
# modelling takes experiment=reward_cpu's sizes, so that preset reuses these stages.
LENGTHS = {"boolq": 128, "dream": 128, "quail": 128, "multirc": 128}


def compose_task(name: str, out_dir: str, extra: list[str]):
    sizes = ["experiment=reward_cpu"] if name.startswith("hh") else SIZES
    given = {o.split("=")[0].lstrip("+") for o in extra}
    sizes = [o for o in sizes if o.split("=")[0].lstrip("+") not in given]  # the command line wins
    overrides = [*sizes, f"task={name}", f"paths.output_dir={out_dir}", "logger.mode=disabled", *extra]
    if name in LENGTHS:
        overrides += [f"weak.max_length={LENGTHS[name]}", f"strong.max_length={LENGTHS[name]}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides), overrides


def describe(cfg) -> dict:
    """Splits, balance, lengths and the time to format and tokenise them (this process, cold)."""
    started = time.time()
    splits = tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed)
    tokenizer = load_tokenizer(cfg.strong, cfg.paths.zoo_dir)
    tokenize(splits, tokenizer, cfg.strong.max_length)
    seconds = time.time() - started
    texts = [t for name in ("train_a", "train_b", "test") for t in splits[name]["text"]]
    lengths = np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]])
    if cfg.task.pairwise:
        second_texts = [t for name in ("train_a", "train_b", "test") for t in splits[name]["text_b"]]
        lengths = lengths + np.array([len(ids) for ids in tokenizer(second_texts)["input_ids"]])
    test_rate = float(np.mean(splits["test"]["label"]))
    train, _ = tasks.load_sources(cfg.task, cfg.paths.data_dir)
    return {
        "rows": {name: len(rows) for name, rows in splits.items()},
        "positive_rate": {name: float(np.mean(rows["label"])) for name, rows in splits.items() if len(rows)},
        "source_rows": len(train),
        "tokens_mean": float(lengths.mean()),
        "tokens_p95": float(np.percentile(lengths, 95)),
        "cut_share": float(np.mean(lengths > cfg.strong.max_length * (2 if cfg.task.pairwise else 1))),
        "majority_rate": max(test_rate, 1 - test_rate),
        "val_majority_rate": max(np.mean(splits["val"]["label"]), 1 - np.mean(splits["val"]["label"])),
        "format_tokenize_seconds": seconds,
    }, splits


def measurable(record: dict) -> dict:
    """The rule docs/tasks.md states, on validation only."""
    n = record["rows"]["val"]
    weak, ceiling = record["weak"], record["ceiling"]
    two_se = 2 * math.sqrt(0.25 / n)
    noise = gap_noise(weak["val_acc"], ceiling["val_acc"], n)
    weak_above_chance = (weak["val_acc"] - record["val_majority_rate"] > two_se) and (weak["val_auroc"] - 0.5 > two_se)
    gap = ceiling["val_acc"] - weak["val_acc"]
    return {
        "val_gap": gap,
        "val_gap_noise": noise,
        "weak_above_chance": bool(weak_above_chance),
        "gap_above_noise": bool(gap > noise),
        "measurable": bool(weak_above_chance and gap > noise),
    }


def measure(name: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out_dir:
        cfg, overrides = compose_task(name, out_dir, extra)
        preflight.check_config(cfg)
        record, splits = describe(cfg)
        requests = [r for r in methods.recipe(cfg) if r.role in (WEAK, CEILING)]
        started = time.time()
        with parallel.ranks(cfg, threads.use(cfg)):
            stages = StageRunner(cfg, splits).run(requests)
        record["train_wall_seconds"] = time.time() - started
    keep = ("acc", "auroc", "val_acc", "val_auroc", "train_seconds", "total_seconds")
    record.update(
        {
            role: {
                "model": stage.model,
                "key": stage.key,
                "reused": stage.reused,
                **{k: stage.metrics[k] for k in keep},
            }
            for role, stage in stages.items()
        }
    )
    record.update(
        task=name,
        about=cfg.task.about,
        max_length=cfg.strong.max_length,
        balance=cfg.task.balance,
        pairwise=cfg.task.pairwise,
        precision=cfg.trainer.precision,
        overrides=[o for o in overrides if not o.startswith("paths.output_dir=")],
        machine=f"{platform.machine()}, {os.cpu_count()} cores",
        date=datetime.date.today().isoformat(),
        **measurable(record),
    )
    return record


def fmt_pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render(records: list[dict]) -> str:
    rows = []
    for r in records:
        w, c = r["weak"], r["ceiling"]
        name = (
            r["task"]
            + (" (substitute)" if r.get("about") and "substitute" in r["about"] else "")
            + (" (RM)" if r["pairwise"] else "")
        )
        balance = fmt_pct(r["positive_rate"]["train_a"]) + (" (bal.)" if r["balance"] else "")
        rows.append(
            f"| {name} | {r['rows']['train_a']}/{r['rows']['train_b']}/{r['rows']['val']}/{r['rows']['test']} | "
            f"{balance} | {r['tokens_mean']:.0f} / {r['tokens_p95']:.0f} | {r['max_length']} | "
            f"{fmt_pct(r['majority_rate'])} | {fmt_pct(w['val_acc'])} / {w['val_auroc']:.2f} | "
            f"{fmt_pct(c['val_acc'])} / {c['val_auroc']:.2f} | "
            f"{100 * r['val_gap']:+.1f} ± {100 * r['val_gap_noise']:.1f} | "
            f"{'**yes**' if r['measurable'] else 'no'} | {fmt_pct(w['acc'])} / {fmt_pct(c['acc'])} | "
            f"{r['format_tokenize_seconds']:.1f} s | {w['total_seconds'] + c['total_seconds']:.0f} s |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated; default: every offline task")
    parser.add_argument("--render", action="store_true", help="only rebuild docs/tasks.md from the json files")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where results/tasks/ and tasks.md are")
    parser.add_argument(
        "--weak", default=WEAK_MODEL, help=f"the weak model (default {WEAK_MODEL}); others get a table of their own"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to every task (e.g. paths.zoo_dir=...)")
    args = parser.parse_args()
    own = args.weak != WEAK_MODEL
    out = args.docs / "results" / ("tasks_" + args.weak if own else "tasks")
    marker = f"<!-- table {args.weak} -->" if own else "<!-- table -->"
    out.mkdir(parents=True, exist_ok=True)
    if not args.render:
        for name in args.tasks.split(","):
            started = time.time()
            record = measure(name, [*args.overrides, f"model@weak={args.weak}"])
            (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
            print(
                f"{name}: weak val {fmt_pct(record['weak']['val_acc'])}, "
                f"ceiling val {fmt_pct(record['ceiling']['val_acc'])}, "
                f"measurable: {record['measurable']} ({time.time() - started:.0f} s)",
                flush=True,
            )
    records = [json.loads((out / f"{name}.json").read_text()) for name in TASKS if (out / f"{name}.json").exists()]
    table = render(records)
    page = args.docs / "tasks.md"
    text = page.read_text() if page.exists() else ""
    if marker not in text:
        text += f"\n{marker}\n<!-- /table -->\n"
    start = text.index(marker) + len(marker) + 1
    end = text.index("<!-- /table -->", start)
    page.write_text(text[:start] + HEADER + table + "\n" + text[end:])
    print(HEADER + table)


HEADER = (
    "| task | rows A/B/val/test | positive (A) | tokens mean / p95 | max_length | majority (test) "
    "| weak val acc / AUROC | ceiling val acc / AUROC | val gap ± noise (pts) | measurable | test acc weak / ceiling "
    "| format + tokenise | weak + ceiling stages |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


if __name__ == "__main__":
    main()
