"""One weak-to-strong experiment: weak -> weak labels -> ceiling -> transfer -> PGR.

Each stage is cached by a hash of everything that changes its result (see
``stage_spec``), so a sweep over losses trains the weak model, its labels and the ceiling
once, and a rerun trains nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import hydra
import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from w2s_lightning import tasks, tracking
from w2s_lightning.cache import StageCache
from w2s_lightning.data import TaskDataModule
from w2s_lightning.errors import ConfigError
from w2s_lightning.losses import XentLoss
from w2s_lightning.metrics import evaluate, pgr
from w2s_lightning.models import check_pooling, load_classifier, load_tokenizer
from w2s_lightning.module import W2SModule

log = logging.getLogger(__name__)

# Bump when the artifacts of a stage change meaning, so old cache entries are not reused.
STAGE_FORMAT = 1
GROUND_TRUTH = "ground_truth"


@dataclass
class Stage:
    role: str
    model: str
    key: str
    path: str
    reused: bool
    metrics: dict
    predictions: dict[str, torch.Tensor]


def _plain(node: DictConfig) -> dict:
    return OmegaConf.to_container(node, resolve=True)


def stage_spec(
    cfg: DictConfig, data_fingerprint: str, model_cfg: DictConfig, loss_cfg: DictConfig | None, labels_key: str,
) -> dict:
    """Everything that changes a stage's result, and nothing that does not (logging, paths)."""
    return {
        "format": STAGE_FORMAT,
        "task": _plain(cfg.task),
        "data": data_fingerprint,
        "seed": cfg.seed,
        "model": _plain(model_cfg),
        "train": _plain(cfg.train),
        "precision": str(cfg.trainer.precision),
        "loss": _plain(loss_cfg) if loss_cfg is not None else "xent",
        "labels": labels_key,
    }


def _accumulation(cfg: DictConfig, model_cfg: DictConfig) -> int:
    if cfg.train.batch_size % model_cfg.minibatch_size:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is not a multiple of "
            f"{model_cfg.name}'s minibatch_size={model_cfg.minibatch_size}; change one of them."
        )
    return cfg.train.batch_size // model_cfg.minibatch_size


def check_config(cfg: DictConfig) -> None:
    """Refuse a config that would fail or mislead halfway through, before any training."""
    for model_cfg in (cfg.weak, cfg.strong):
        _accumulation(cfg, model_cfg)
        check_pooling(model_cfg.pooling)
    if cfg.trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
        raise ConfigError("trainer=gpu, but this machine has no CUDA GPU that torch can see; "
                          "use trainer=cpu here, or install the CUDA build of torch (README).")
    if str(cfg.trainer.get("devices", 1)) != "1" or int(cfg.trainer.get("num_nodes", 1)) != 1:
        # Under DDP, Trainer.predict returns each rank's share only: the weak labels and test
        # predictions would be incomplete.
        raise ConfigError(
            f"trainer.devices={cfg.trainer.devices}: stages predict on one device; "
            "set trainer.devices=1 (one GPU or CPU process per job, several jobs in a sweep)."
        )


def skip_reason(cfg: DictConfig) -> str | None:
    """Why a ladder sweep skips this (weak, strong) pair, or None when it runs."""
    weak, strong = float(cfg.weak.params), float(cfg.strong.params)
    sizes = f"{cfg.weak.name} has {weak:.3g} parameters, {cfg.strong.name} {strong:.3g}"
    if weak > strong and not cfg.ladder.weak_larger:
        return f"the weak model is larger than the strong one ({sizes}); set ladder.weak_larger=true to run it"
    if weak == strong and not cfg.ladder.same_size:
        return f"weak and strong are the same size ({sizes}); set ladder.same_size=true to run it"
    return None


def _train_and_predict(
    cfg: DictConfig, role: str, model_cfg: DictConfig, loss, splits: datasets.DatasetDict,
    train_split: str, targets: torch.Tensor | None, predict_splits: list[str], out: Path,
) -> None:
    """Fit one classifier and write its predictions and test metrics into ``out``."""
    started = time.time()
    zoo_dir = cfg.paths.zoo_dir
    datamodule = TaskDataModule(
        splits, load_tokenizer(model_cfg, zoo_dir), train_split, predict_splits,
        max_length=model_cfg.max_length, minibatch_size=model_cfg.minibatch_size,
        eval_batch_size=model_cfg.eval_batch_size,
        train_targets=None if targets is None else targets.numpy(),
    )
    module = W2SModule(
        load_classifier(model_cfg, zoo_dir), loss, lr=model_cfg.lr,
        weight_decay=cfg.train.weight_decay, lr_scheduler=cfg.train.lr_scheduler,
        warmup_frac=cfg.train.warmup_frac, dropout=cfg.train.dropout, stage=role,
    )
    # Seed after loading: building a zoo model on first use draws random numbers, and the
    # shuffling order must not depend on whether the zoo was already built.
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    logger = tracking.stage_logger(cfg, role, model_cfg.name)
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, max_epochs=cfg.train.epochs, accumulate_grad_batches=_accumulation(cfg, model_cfg),
        logger=logger, default_root_dir=cfg.paths.output_dir,
    )
    exit_code = 1  # the W&B run is marked failed unless the stage completes
    try:
        trainer.fit(module, datamodule=datamodule)
        train_seconds = time.time() - started
        outputs = trainer.predict(module, datamodule=datamodule)
        if len(predict_splits) == 1:
            outputs = [outputs]
        predictions = {name: torch.cat(batches).float() for name, batches in zip(predict_splits, outputs)}
        metrics = evaluate(predictions["test"], torch.tensor(splits["test"]["label"]))
        metrics.update(train_seconds=train_seconds, total_seconds=time.time() - started,
                       n_train=len(splits[train_split]))
        if logger:
            logger.log_metrics({f"test/{k}": v for k, v in metrics.items() if k in ("acc", "auroc")})
        exit_code = 0
    finally:
        if logger:
            logger.experiment.finish(exit_code=exit_code)
    save_file({name: p.contiguous() for name, p in predictions.items()}, str(out / "predictions.safetensors"))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))


def run_stage(
    cfg: DictConfig, cache: StageCache, splits: datasets.DatasetDict, data_key: str, role: str,
    model_cfg: DictConfig, loss_cfg: DictConfig | None = None, labels: Stage | None = None,
) -> Stage:
    """Train (or reuse) one stage. Without ``labels`` it trains on ground truth of half A and
    predicts half B (the weak labels) and test; with ``labels`` it trains on the weak labels
    of half B and predicts test."""
    labels_key = labels.key if labels else GROUND_TRUTH
    spec = stage_spec(cfg, data_key, model_cfg, loss_cfg, labels_key)
    kind = "transfer" if labels else "gt"

    if labels:
        train_split, targets, predict_splits = "train_b", labels.predictions["train_b"], ["test"]
    else:
        train_split, targets, predict_splits = "train_a", None, ["train_b", "test"]

    def build(out: Path) -> None:
        log.info("%s: training %s on %s", role, model_cfg.name, "weak labels" if labels else "ground truth")
        loss = hydra.utils.instantiate(loss_cfg.fn) if loss_cfg is not None else XentLoss()
        _train_and_predict(cfg, role, model_cfg, loss, splits, train_split, targets, predict_splits, out)

    folder, reused = cache.get_or_build(kind, spec, build)
    if reused:
        log.info("%s: reusing %s (%s) from the cache, not retraining: %s", role, model_cfg.name, kind, folder)
    return Stage(
        role=role, model=model_cfg.name, key=folder.name, path=str(folder.resolve()), reused=reused,
        metrics=json.loads((folder / "metrics.json").read_text()),
        predictions=load_file(str(folder / "predictions.safetensors")),
    )


def run(cfg: DictConfig) -> dict:
    """Run the experiment ``cfg`` describes; write and return its results."""
    started = time.time()
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs that have them
    check_config(cfg)
    reason = skip_reason(cfg)
    if reason:
        # A ladder sweep is the product weak x strong: the pairs it does not study are
        # recorded (the report counts them) and left untrained.
        log.warning("skipping %s -> %s: %s", cfg.weak.name, cfg.strong.name, reason)
        skipped = {"task": cfg.task.name, "weak_model": cfg.weak.name, "strong_model": cfg.strong.name,
                   "loss": cfg.loss.name, "seed": cfg.seed, "skipped": reason}
        (output_dir / "skipped.json").write_text(json.dumps(skipped, indent=2))
        return skipped
    splits = tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed)
    cache = StageCache(cfg.paths.stage_dir)
    data_key = tasks.fingerprint(splits)

    weak = run_stage(cfg, cache, splits, data_key, "weak", cfg.weak)
    ceiling = run_stage(cfg, cache, splits, data_key, "ceiling", cfg.strong)
    transfer = run_stage(cfg, cache, splits, data_key, "transfer", cfg.strong, cfg.loss, labels=weak)

    stages = {
        s.role: {"model": s.model, "key": s.key, "path": s.path, "reused": s.reused, **s.metrics}
        for s in (weak, ceiling, transfer)
    }
    results = {
        "task": cfg.task.name,
        "weak_model": cfg.weak.name,
        "strong_model": cfg.strong.name,
        "loss": cfg.loss.name,
        "seed": cfg.seed,
        "n_test": len(splits["test"]),
        "stages": stages,
        "pgr": pgr(weak.metrics["acc"], transfer.metrics["acc"], ceiling.metrics["acc"]),
        "pgr_auroc": pgr(weak.metrics["auroc"], transfer.metrics["auroc"], ceiling.metrics["auroc"]),
        "class_balance": tasks.class_balance(splits),
        "wall_seconds": time.time() - started,
        "config": _plain(cfg),
    }
    results["pgr_defined"] = not math.isnan(results["pgr"])
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    tracking.log_summary(cfg, {  # also what `report.wandb_group=...` reads back
        **{f"{role}/{k}": stages[role][k] for role in stages for k in ("acc", "auroc", "key", "reused")},
        "pgr": results["pgr"], "pgr_auroc": results["pgr_auroc"], "pgr_defined": results["pgr_defined"],
    })
    print(summary(results, output_dir / "results.json"))
    return results


def summary(results: dict, path: os.PathLike) -> str:
    """The one-screen table printed at the end of a run."""
    lines = [
        f"\n{results['task']}: {results['weak_model']} -> {results['strong_model']}, "
        f"loss={results['loss']}, seed={results['seed']}, {results['n_test']} test examples",
        f"  {'stage':<10}{'model':<16}{'test acc':>10}{'AUROC':>8}  how",
    ]
    for role in ("weak", "transfer", "ceiling"):
        s = results["stages"][role]
        how = "reused from cache" if s["reused"] else f"trained in {s['total_seconds']:.0f}s"
        lines.append(f"  {role:<10}{s['model']:<16}{100 * s['acc']:>9.1f}%{s['auroc']:>8.3f}  {how}")
    if results["pgr_defined"]:
        lines.append(f"  PGR (accuracy) = {results['pgr']:.3f}   PGR (AUROC) = {results['pgr_auroc']:.3f}")
    else:
        lines.append("  PGR undefined: the ceiling does not beat the weak model (reported as NaN)")
    lines.append(f"  wall time {results['wall_seconds']:.0f}s; results in {path}")
    return "\n".join(lines)
