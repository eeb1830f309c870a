"""Which hidden layer a linear probe should read, chosen per model on the validation split only.

For each model: one forward pass over half A and validation (seed 0, the preset's sizes),
every layer's pooled hidden state (the model's own pooling), a logistic regression fitted on
half A's ground truth per layer (L-BFGS, L2), and its accuracy on validation. The layer with
the best validation accuracy is the model's ``hidden_layer`` (conf/model/<name>.yaml); test
is never read.

    python scripts/choose_layer.py                     # the causal ladder's rungs on SciQ
    python scripts/choose_layer.py --task boolq --models smollm2_135m,gemma3_270m

Writes docs/results/layers/<task>/<model>.json and prints one line per model. Given two or more
models, it also screens the first as weak and the last as strong by the rule of docs/tasks.md,
on validation: the weak model's best layer clearly above the validation majority rate, and the
strong one's gap above its noise (the screen has no AUROC, so accuracy decides alone).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import w2s_lightning.config  # noqa: F401  (registers the schemas and resolvers conf/ uses)
from w2s_lightning import tasks, threads
from w2s_lightning.data import tokenize
from w2s_lightning.metrics import gap_noise
from w2s_lightning.models import POOLINGS, load_classifier, load_tokenizer
from w2s_lightning.relabel import LogisticProbe

ROOT = Path(__file__).resolve().parents[1]
RUNGS = "smollm2_135m,gemma3_270m,qwen25_coder_05b,qwen25_coder_15b"
L2 = 1e-3  # the logistic regression's weight decay, on standardised features


def layer_features(cfg, classifier, tokenizer, split, batch_size: int = 16) -> torch.Tensor:
    """(layers + 1, rows, width): every hidden state of ``split``, pooled as the model pools."""
    pool = POOLINGS[cfg.strong.pooling]
    rows = split.with_format("torch", columns=["input_ids", "attention_mask"])
    pooled = []
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.trainer.precision == "bf16-mixed")
    with torch.no_grad(), autocast:
        for start in range(0, len(rows), batch_size):
            batch = tokenizer.pad(
                [rows[i] for i in range(start, min(start + batch_size, len(rows)))], return_tensors="pt"
            )
            hidden = classifier.backbone(**batch, output_hidden_states=True).hidden_states
            pooled.append(torch.stack([pool(h, batch["attention_mask"]).float() for h in hidden]))
    return torch.cat(pooled, dim=1)


def probe_accuracy(train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels) -> float:
    """Validation accuracy of an L2 logistic regression fitted on standardised ``train``."""
    probe = LogisticProbe(L2).fit(train, train_labels)
    return float(((probe.predict(val) > 0.5).long() == val_labels).float().mean())


def choose(task: str, model: str, overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["experiment=offline_causal", f"task={task}", f"model@strong={model}", "seed=0", *overrides],
        )
    started = time.time()
    splits = tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed)
    tokenizer = load_tokenizer(cfg.strong, cfg.paths.zoo_dir)
    chosen = {name: tokenize(splits[name], tokenizer, cfg.strong.max_length) for name in ("train_a", "val")}
    torch.set_num_threads(threads.threads(cfg))
    classifier = load_classifier(cfg.strong, cfg.paths.zoo_dir, dropout=False, fused_gelu=cfg.train.fused_gelu).eval()
    train, val = (layer_features(cfg, classifier, tokenizer, chosen[name]) for name in ("train_a", "val"))
    labels = {name: torch.tensor(splits[name]["label"]) for name in ("train_a", "val")}
    accuracy = [probe_accuracy(train[i], labels["train_a"], val[i], labels["val"]) for i in range(len(train))]
    best = max(range(len(accuracy)), key=lambda i: (accuracy[i], i))  # ties: the deeper layer
    return {
        "task": task,
        "model": model,
        "layers": len(accuracy) - 1,
        "val_acc_by_layer": accuracy,
        "best_layer": best,
        "best_val_acc": accuracy[best],
        "final_layer_val_acc": accuracy[-1],
        "rows": {"train_a": len(train[0]), "val": len(val[0])},
        "val_majority": max(float(labels["val"].float().mean()), 1 - float(labels["val"].float().mean())),
        "precision": cfg.trainer.precision,
        "seconds": time.time() - started,
        "date": datetime.date.today().isoformat(),
    }


def verdict(weak: dict, strong: dict) -> str:
    """Whether the pair's PGR is measurable on this task, by the rule of docs/tasks.md."""
    n, weak_acc, strong_acc = weak["rows"]["val"], weak["best_val_acc"], strong["best_val_acc"]
    above_chance = weak_acc - weak["val_majority"] > 2 * math.sqrt(0.25 / n)  # two standard errors of a coin flip
    gap, noise = strong_acc - weak_acc, gap_noise(weak_acc, strong_acc, n)
    return (
        f"{weak['task']} {weak['model']} -> {strong['model']}: weak {100 * weak_acc:.1f}% against a "
        f"{100 * weak['val_majority']:.1f}% majority, gap {100 * gap:+.1f} ± {100 * noise:.1f} points: "
        f"{'measurable' if above_chance and gap > noise else 'not measurable'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="sciq")
    parser.add_argument("--models", default=RUNGS, help=f"comma-separated (default: {RUNGS})")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "layers")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (e.g. paths.zoo_dir=...)")
    args = parser.parse_intermixed_args()  # Hydra overrides before or after the flags
    (args.out / args.task).mkdir(parents=True, exist_ok=True)
    records = []
    for model in args.models.split(","):
        record = choose(args.task, model, args.overrides)
        (args.out / args.task / f"{model}.json").write_text(json.dumps(record, indent=2) + "\n")
        print(
            f"{args.task} {model}: best layer {record['best_layer']} of {record['layers']} "
            f"(val {100 * record['best_val_acc']:.1f}%; final layer {100 * record['final_layer_val_acc']:.1f}%), "
            f"{record['seconds']:.0f} s",
            flush=True,
        )
        records.append(record)
    if len(records) > 1:
        print(verdict(records[0], records[-1]))


if __name__ == "__main__":
    main()
