"""One weak-to-strong experiment: weak -> weak labels -> ceiling -> transfer -> PGR, and
optionally a bootstrapping chain weak -> rung 1 -> ... -> strong beside the direct transfer.

Each stage is cached by a hash of everything that changes its result (see
``stage_spec``), so a sweep over losses trains the weak model, its labels and the
ceiling once, and a rerun trains nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from w2s_lightning import config, generative, tasks, tracking
from w2s_lightning.cache import StageCache
from w2s_lightning.data import FeatureDataModule, TaskDataModule
from w2s_lightning.errors import ConfigError
from w2s_lightning.losses import XentLoss
from w2s_lightning.metrics import agreement, evaluate, gap_noise, pgr, pgr_status
from w2s_lightning.models import LinearProbe, check_pooling, load_classifier, load_tokenizer
from w2s_lightning.module import W2SModule

log = logging.getLogger(__name__)

# Bump when the artifacts of a stage change meaning, so old cache entries are not reused.
STAGE_FORMAT = 3
GROUND_TRUTH = "ground_truth"
# What train.select monitors on the validation split (None: keep the last weights).
SELECTION_MONITORS = {"last": None, "weak_val": "val/supervisor_acc", "oracle_val": "val/acc"}
# train.* keys that only a student (a stage trained on a supervisor's labels) uses: model
# selection is a weak-to-strong method, so the weak model and the ceiling always train as
# in the baseline, and PGRs of every method share their end points.
STUDENT_ONLY_TRAIN_KEYS = ("select", "val_every", "early_stopping_patience")
# Trainer settings that change only what is shown, never a stage's result: left out of its key.
DISPLAY_ONLY_TRAINER_KEYS = ("log_every_n_steps", "enable_model_summary", "enable_progress_bar")


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


def _accumulation(cfg: DictConfig, model_cfg: DictConfig) -> int:
    if cfg.train.batch_size % model_cfg.minibatch_size:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is not a multiple of "
            f"{model_cfg.name}'s minibatch_size={model_cfg.minibatch_size}; change one of them."
        )
    return cfg.train.batch_size // model_cfg.minibatch_size


def check_config(cfg: DictConfig) -> None:
    """Refuse a config that would fail or mislead halfway through, before any training."""
    for model_cfg in (cfg.weak, cfg.strong, *cfg.chain.rungs.values()):
        _accumulation(cfg, model_cfg)
        check_pooling(model_cfg.pooling)
        fully_trained = cfg.finetune.name == "full" or (cfg.generative.enabled and model_cfg is cfg.strong)
        if model_cfg.get("dtype") not in (None, "float32") and fully_trained:
            # AdamW steps of lr 1e-5 are below bf16's resolution for most weights (and every
            # LayerNorm near 1.0): pure half-precision training leaves them where they were.
            raise ConfigError(
                f"model '{model_cfg.name}' loads in dtype={model_cfg.dtype}, but full fine-tuning needs float32 "
                "master weights (bf16 weights swallow small AdamW updates). Set dtype=null for it (float32 "
                "weights, with trainer.precision=bf16-mixed for speed), or use finetune=lora or finetune=probe, "
                "whose frozen backbone may stay in half precision."
            )
    if cfg.train.select not in SELECTION_MONITORS:
        raise ConfigError(f"train.select={cfg.train.select} is unknown; use one of {sorted(SELECTION_MONITORS)}.")
    if cfg.train.select != "last" and cfg.task.n_val <= 0:
        raise ConfigError(f"train.select={cfg.train.select} selects on the validation split; set task.n_val > 0.")
    if cfg.train.early_stopping_patience and cfg.train.select == "last":
        raise ConfigError("train.early_stopping_patience needs something to monitor: "
                          "set train.select=weak_val (or oracle_val, for comparison only).")
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


def skip_reason(cfg: DictConfig, sweep: bool = True) -> str | None:
    """Why a ladder sweep skips this (weak, strong) pair, or None when it runs. Outside a
    sweep, naming two families is itself the request to pair them."""
    if sweep and cfg.weak.family != cfg.strong.family and not cfg.ladder.cross_family:
        return (f"{cfg.weak.name} ({cfg.weak.family}) and {cfg.strong.name} ({cfg.strong.family}) are of different "
                "families, and ladders run within one family as the paper's do; set ladder.cross_family=true to run it")
    weak, strong = float(cfg.weak.params), float(cfg.strong.params)
    sizes = f"{cfg.weak.name} has {weak:.3g} parameters, {cfg.strong.name} {strong:.3g}"
    if weak > strong and not cfg.ladder.weak_larger:
        return f"the weak model is larger than the strong one ({sizes}); set ladder.weak_larger=true to run it"
    if weak == strong and not cfg.ladder.same_size:
        return f"weak and strong are the same size ({sizes}); set ladder.same_size=true to run it"
    return None


def method_name(cfg: DictConfig) -> str:
    """A short name for the choices beyond the loss that set how PGR is raised."""
    parts = [f"finetune={cfg.finetune.name}"] if cfg.finetune.name != "full" else []
    parts += ["generative"] if cfg.generative.enabled else []
    parts += [f"select={cfg.train.select}"] if cfg.train.select != "last" else []
    parts += [f"chain={cfg.chain.name}"] if cfg.chain.rungs else []
    return "+".join(parts) or "baseline"


def stage_spec(cfg: DictConfig, data_key: str, model_cfg: DictConfig, **parts) -> dict:
    """Everything that changes a stage's result, and nothing that does not (logging, paths):
    the formatted rows' fingerprint, task, seed, model, the Trainer's settings (precision,
    max_steps, limit_train_batches, gradient clipping, devices, ...), plus the stage's ``parts``."""
    trainer = {k: v for k, v in _plain(cfg.trainer).items() if k not in DISPLAY_ONLY_TRAINER_KEYS}
    return {
        "format": STAGE_FORMAT,
        "task": _plain(cfg.task),
        "data": data_key,
        "seed": cfg.seed,
        "model": _plain(model_cfg),
        "trainer": trainer,
        **parts,
    }


def classifier_parts(cfg: DictConfig, loss_cfg: DictConfig | None, labels_key: str, train_split: str,
                     predicts: list[str], init_key: str | None) -> dict:
    """The parts of a classifier stage's spec beyond ``stage_spec``'s: recipe, what trains,
    loss, whose labels on which rows, what it predicts, and the weights it starts from. A stage
    trained on ground truth ignores the student-only keys of ``train``."""
    train = _plain(cfg.train)
    if labels_key == GROUND_TRUTH:
        train = {k: v for k, v in train.items() if k not in STUDENT_ONLY_TRAIN_KEYS}
    return {
        "train": train, "finetune": _plain(cfg.finetune),
        "loss": _plain(loss_cfg) if loss_cfg is not None else "xent", "labels": labels_key,
        "train_split": train_split, "predicts": predicts, "init": init_key,
    }


class Experiment:
    """The stages of one experiment over one set of splits, each built once via the cache."""

    def __init__(self, cfg: DictConfig, splits: datasets.DatasetDict):
        self.cfg = cfg
        self.splits = splits
        self.data_key = tasks.fingerprint(splits)
        self.cache = StageCache(cfg.paths.stage_dir)
        self.parts: dict[str, range] = {}  # bootstrapping: name -> rows of train_b

    def spec(self, model_cfg: DictConfig, **parts) -> dict:
        return stage_spec(self.cfg, self.data_key, model_cfg, **parts)

    # ------------------------------------------------------------ building blocks

    def trainer(self, model_cfg: DictConfig, epochs: int, out: Path, logger, select: bool = False,
                ) -> tuple[pl.Trainer, str | None]:
        """A Trainer from ``conf/trainer``; with ``select`` (students only), it keeps the
        checkpoint that ``train.select`` prefers (and stops early if asked), and returns what it
        monitors."""
        monitor = SELECTION_MONITORS[self.cfg.train.select] if select else None
        callbacks = []
        if monitor:
            callbacks.append(ModelCheckpoint(dirpath=out / "checkpoints", monitor=monitor, mode="max", save_top_k=1,
                                             save_weights_only=True))
            if self.cfg.train.early_stopping_patience:
                callbacks.append(EarlyStopping(monitor=monitor, mode="max",
                                               patience=self.cfg.train.early_stopping_patience))
        trainer = hydra.utils.instantiate(
            self.cfg.trainer, max_epochs=epochs, accumulate_grad_batches=_accumulation(self.cfg, model_cfg),
            logger=logger, default_root_dir=self.cfg.paths.output_dir, callbacks=callbacks,
            enable_checkpointing=bool(monitor), val_check_interval=self.cfg.train.val_every,
        )
        return trainer, monitor

    def datamodule(self, model_cfg: DictConfig, train_split: str, predict_splits: list[str],
                   targets: dict[str, torch.Tensor], features: Stage | None) -> TaskDataModule:
        sizes = dict(minibatch_size=model_cfg.minibatch_size, eval_batch_size=model_cfg.eval_batch_size)
        targets = {name: t.numpy() for name, t in targets.items()}
        if features is not None:
            return FeatureDataModule(self.splits, self.features_of(features), train_split=train_split,
                                     predict_splits=predict_splits, targets=targets, **sizes)
        return TaskDataModule(self.splits, load_tokenizer(model_cfg, self.cfg.paths.zoo_dir), train_split,
                              predict_splits, max_length=model_cfg.max_length, targets=targets, seed=self.cfg.seed,
                              length_buckets=self.cfg.train.length_buckets, **sizes)

    def features_of(self, features: Stage) -> dict[str, torch.Tensor]:
        by_split = dict(features.predictions)
        for name, rows in self.parts.items():
            by_split[name] = by_split["train_b"][rows.start:rows.stop]
        return by_split

    def weights(self, model_cfg: DictConfig, init: Stage | None) -> DictConfig:
        """``model_cfg``, loading from a generative stage's weights when there is one."""
        return model_cfg if init is None else OmegaConf.merge(model_cfg, {"path": str(Path(init.path) / "model")})

    # ------------------------------------------------------------ stages

    def _cached(self, kind: str, role: str, model_cfg: DictConfig, spec: dict, build) -> Stage:
        folder, reused = self.cache.get_or_build(kind, spec, build)
        if reused:
            log.info("%s: reusing %s (%s) from the cache, not retraining: %s", role, model_cfg.name, kind, folder)
        # Classifier and feature stages hold predictions; a generative stage holds weights only.
        metrics_file, predictions_file = folder / "metrics.json", folder / "predictions.safetensors"
        return Stage(
            role=role, model=model_cfg.name, key=folder.name, path=str(folder.resolve()), reused=reused,
            metrics=json.loads(metrics_file.read_text()) if metrics_file.exists() else {},
            predictions=load_file(str(predictions_file)) if predictions_file.exists() else {},
        )

    def generative(self, model_cfg: DictConfig) -> Stage | None:
        """The strong model after generative fine-tuning on the task's unlabeled text."""
        if not self.cfg.generative.enabled:
            return None
        spec = self.spec(model_cfg, generative=_plain(self.cfg.generative), batch_size=self.cfg.train.batch_size)

        def build(out: Path) -> None:
            log.info("generative: fine-tuning %s on the task's unlabeled text (%s)", model_cfg.name,
                     "causal LM" if generative.is_causal(model_cfg) else "masked LM")
            logger = tracking.stage_logger(self.cfg, "generative", model_cfg.name)
            trainer, _ = self.trainer(model_cfg, self.cfg.generative.epochs, out, logger)
            with tracking.finished_when_done(logger):
                generative.finetune(self.cfg, model_cfg, self.splits, trainer, out)

        return self._cached("generative", "generative", model_cfg, spec, build)

    def features(self, model_cfg: DictConfig, init: Stage | None) -> Stage | None:
        """Frozen-backbone features of every split, once per (model, task, weights): what a
        linear probe trains on. None unless finetune=probe."""
        if self.cfg.finetune.name != "probe":
            return None
        spec = self.spec(model_cfg, features=True, init=init.key if init else None)

        def build(out: Path) -> None:
            log.info("features: computing %s's frozen features of every split", model_cfg.name)
            classifier = load_classifier(self.weights(model_cfg, init), self.cfg.paths.zoo_dir, dropout=False)
            names = ["train_a", "train_b", "val", "test"]
            datamodule = self.datamodule(model_cfg, "train_a", names, {}, None)
            trainer, _ = self.trainer(model_cfg, 1, out, False)
            outputs = trainer.predict(FeatureModule(classifier), datamodule=datamodule)
            save_file({n: datamodule.in_row_order(n, torch.cat(b).float()).contiguous() for n, b in zip(names, outputs)},
                      str(out / "predictions.safetensors"))

        return self._cached("features", "features", model_cfg, spec, build)

    def stage(self, role: str, model_cfg: DictConfig, loss_cfg: DictConfig | None = None,
              labels: Stage | None = None, train_split: str | None = None, init: Stage | None = None,
              produces_labels: bool = True) -> Stage:
        """Train (or reuse) one classifier. Without ``labels`` it trains on the ground truth of
        half A; with ``labels``, on that supervisor's soft labels of half B (or of a part of
        it, ``train_split``), and it validates against the supervisor's labels of ``val``. Every
        stage predicts ``val`` and ``test``; one that ``produces_labels`` also predicts ``train_b``
        for the next one."""
        train_split = train_split or ("train_b" if labels else "train_a")
        predict_splits = [name for name in (["train_b"] if produces_labels else []) + ["val", "test"]
                          if len(self.splits[name])]  # task.n_val=0 leaves val empty
        features = self.features(model_cfg, init)
        spec = self.spec(model_cfg, **classifier_parts(
            self.cfg, loss_cfg, labels.key if labels else GROUND_TRUTH, train_split, predict_splits,
            init.key if init else None))
        targets = self.targets(labels, train_split) if labels else {}

        def build(out: Path) -> None:
            log.info("%s: training %s on %s", role, model_cfg.name, f"{labels.role}'s labels" if labels else "ground truth")
            loss = hydra.utils.instantiate(loss_cfg.fn) if loss_cfg is not None else XentLoss()
            if features is not None:
                classifier = LinearProbe(features.predictions["train_a"].shape[1])
            else:
                classifier = load_classifier(self.weights(model_cfg, init), self.cfg.paths.zoo_dir, self.cfg.finetune,
                                             seed=self.cfg.seed, dropout=self.cfg.train.dropout)
            datamodule = self.datamodule(model_cfg, train_split, predict_splits, targets, features)
            self._fit_and_predict(role, model_cfg, classifier, loss, datamodule, predict_splits, labels, out)

        return self._cached("transfer" if labels else "gt", role, model_cfg, spec, build)

    def _fit_and_predict(self, role: str, model_cfg: DictConfig, classifier: torch.nn.Module, loss,
                         datamodule: TaskDataModule, predict_splits: list[str], labels: Stage | None, out: Path) -> None:
        """Fit, select the checkpoint ``train.select`` asks for, predict, and write the
        predictions and test metrics into ``out``."""
        started = time.time()
        cfg = self.cfg
        module = W2SModule(
            classifier, loss, lr=cfg.finetune.lr or model_cfg.lr, head_lr=cfg.train.head_lr,
            weight_decay=cfg.train.weight_decay, lr_scheduler=cfg.train.lr_scheduler,
            warmup_frac=cfg.train.warmup_frac, stage=role,
        )
        logger = tracking.stage_logger(cfg, role, model_cfg.name)
        trainer, monitor = self.trainer(model_cfg, cfg.finetune.epochs or cfg.train.epochs, out, logger,
                                        select=labels is not None)
        with tracking.finished_when_done(logger):
            trainer.fit(module, datamodule=datamodule)
            train_seconds = time.time() - started
            best = trainer.checkpoint_callback.best_model_path if monitor else None
            outputs = trainer.predict(module, datamodule=datamodule, ckpt_path=best or None)
            if len(predict_splits) == 1:  # Lightning unnests a single loader's batches
                outputs = [outputs]
            predictions = {name: datamodule.in_row_order(name, torch.cat(batches).float())
                           for name, batches in zip(predict_splits, outputs)}
            ground_truth = {name: torch.tensor(self.splits[name]["label"]) for name in predict_splits}
            metrics = evaluate(predictions["test"], ground_truth["test"])
            # Calibration where a researcher may look without touching test: on val, and, for a
            # stage that supervises another, on the labels it hands on (half B).
            for prefix, name in (("val", "val"), ("label", "train_b")):
                if name in predictions:
                    metrics.update({f"{prefix}_{k}": v for k, v in evaluate(predictions[name], ground_truth[name]).items()})
            if labels:
                metrics.update(agreement(predictions["test"], labels.predictions["test"], ground_truth["test"]))
            metrics.update(
                train_seconds=train_seconds, total_seconds=time.time() - started,
                n_train=len(datamodule.splits[datamodule.train_split]),
                selection=cfg.train.select if monitor else "last",
                selected_step=int(Path(best).stem.split("step=")[1]) if best else trainer.global_step,
            )
            if logger:
                logger.log_metrics({f"test/{k}": v for k, v in metrics.items() if isinstance(v, float)})
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the selected weights served their purpose
        save_file({name: p.contiguous() for name, p in predictions.items()}, str(out / "predictions.safetensors"))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    def targets(self, labels: Stage, train_split: str) -> dict[str, torch.Tensor]:
        """A supervisor's soft labels for the rows of ``train_split`` (half B or a part of
        it) and of ``val``, row for row."""
        rows = self.parts.get(train_split, range(len(self.splits["train_b"])))
        if train_split != "train_b" and train_split not in self.parts:
            raise ValueError(f"labels come from half B; {train_split} is not half B or a part of it")
        return {train_split: labels.predictions["train_b"][rows.start:rows.stop],
                "val": labels.predictions.get("val", torch.empty(0))}

    def bootstrap(self, weak: Stage, init: Stage | None) -> list[Stage]:
        """weak -> rung 1 -> ... -> strong. Half B is cut into one disjoint part per step, so
        each rung learns from labels its supervisor made on rows that supervisor never
        trained on, and labels the next part for the rung above it."""
        rungs = [*self.cfg.chain.rungs.values(), self.cfg.strong]
        rows = len(self.splits["train_b"])
        bounds = [round(i * rows / len(rungs)) for i in range(len(rungs) + 1)]
        stages, labels = [], weak
        for i, model_cfg in enumerate(rungs):
            part = f"train_b_part{i + 1}of{len(rungs)}"
            self.parts[part] = range(bounds[i], bounds[i + 1])
            self.splits[part] = self.splits["train_b"].select(self.parts[part])
            last = i == len(rungs) - 1
            labels = self.stage("bootstrap" if last else f"rung{i + 1}", model_cfg, self.cfg.loss, labels=labels,
                                train_split=part, init=init if last else None, produces_labels=not last)
            stages.append(labels)
        return stages


class FeatureModule(pl.LightningModule):
    """Predicts a classifier's pooled features (for linear probes); never trains."""

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.classifier = classifier

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self.classifier.pool(batch["input_ids"], batch["attention_mask"])


def run(cfg: DictConfig) -> dict:
    """Run the experiment ``cfg`` describes; write and return its results."""
    started = time.time()
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs that have them
    check_config(cfg)
    reason = skip_reason(cfg, sweep=config.in_multirun())
    if reason:
        # A ladder sweep is the product weak x strong: the pairs it does not study are
        # recorded (the report counts them) and left untrained.
        log.warning("skipping %s -> %s: %s", cfg.weak.name, cfg.strong.name, reason)
        skipped = {"task": cfg.task.name, "weak_model": cfg.weak.name, "strong_model": cfg.strong.name,
                   "loss": cfg.loss.name, "seed": cfg.seed, "skipped": reason}
        (output_dir / "skipped.json").write_text(json.dumps(skipped, indent=2))
        return skipped
    experiment = Experiment(cfg, tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed))

    weak = experiment.stage("weak", cfg.weak)
    init = experiment.generative(cfg.strong)
    ceiling = experiment.stage("ceiling", cfg.strong, init=init)
    transfer = experiment.stage("transfer", cfg.strong, cfg.loss, labels=weak, init=init, produces_labels=False)
    chain = experiment.bootstrap(weak, init) if cfg.chain.rungs else []

    stages = {
        s.role: {"model": s.model, "key": s.key, "path": s.path, "reused": s.reused, **s.metrics}
        for s in (weak, ceiling, transfer, *chain)
    }
    results = {
        "task": cfg.task.name,
        "weak_model": cfg.weak.name,
        "strong_model": cfg.strong.name,
        "loss": cfg.loss.name,
        "method": method_name(cfg),
        "selection": cfg.train.select,
        "seed": cfg.seed,
        "n_test": len(experiment.splits["test"]),
        "stages": stages,
        "pgr": pgr(weak.metrics["acc"], transfer.metrics["acc"], ceiling.metrics["acc"]),
        "pgr_auroc": pgr(weak.metrics["auroc"], transfer.metrics["auroc"], ceiling.metrics["auroc"]),
        # PGR divides by this gap: "gap within noise" flags one the test set cannot resolve.
        "gap": ceiling.metrics["acc"] - weak.metrics["acc"],
        "gap_noise": gap_noise(weak.metrics["acc"], ceiling.metrics["acc"], len(experiment.splits["test"])),
        "pgr_status": pgr_status(weak.metrics["acc"], ceiling.metrics["acc"], len(experiment.splits["test"])),
        "generative": init.key if init else None,
        "class_balance": tasks.class_balance(experiment.splits),
        "wall_seconds": time.time() - started,
        "config": _plain(cfg),
    }
    if chain:
        results["pgr_bootstrap"] = pgr(weak.metrics["acc"], chain[-1].metrics["acc"], ceiling.metrics["acc"])
    results["pgr_defined"] = not math.isnan(results["pgr"])
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    tracking.log_summary(cfg, {  # also what `report.wandb_group=...` reads back
        **{f"{role}/{k}": stages[role][k] for role in stages
           for k in ("acc", "auroc", "ece", "val_ece", "val_margin", "key", "reused") if k in stages[role]},
        **{k: results[k] for k in ("pgr", "pgr_auroc", "pgr_defined", "pgr_status", "gap", "gap_noise", "n_test", "method")
           + (("pgr_bootstrap",) if chain else ())},
    })
    print(summary(results, output_dir / "results.json"))
    return results


def summary(results: dict, path: os.PathLike) -> str:
    """The one-screen table printed at the end of a run."""
    lines = [
        f"\n{results['task']}: {results['weak_model']} -> {results['strong_model']}, "
        f"loss={results['loss']}, {results.get('method', 'baseline')}, seed={results['seed']}, "
        f"{results['n_test']} test examples",
        f"  {'stage':<10}{'model':<16}{'test acc':>10}{'AUROC':>8}{'ECE':>7}{'agree':>7}"
        f"{'val ECE':>9}{'margin':>8}  how",
    ]
    nan = float("nan")
    roles = ["weak", "transfer", *[r for r in results["stages"] if r.startswith("rung")], "bootstrap", "ceiling"]
    for role in [r for r in roles if r in results["stages"]]:
        s = results["stages"][role]
        how = "reused from cache" if s["reused"] else f"trained in {s['total_seconds']:.0f}s"
        agree = f"{100 * s['agreement']:>6.1f}%" if "agreement" in s else f"{'':>7}"
        lines.append(f"  {role:<10}{s['model']:<16}{100 * s['acc']:>9.1f}%{s['auroc']:>8.3f}"
                     f"{s['ece']:>7.3f}{agree}{s.get('val_ece', nan):>9.3f}{s.get('val_margin', nan):>8.3f}  {how}")
        if "label_ece" in s and role == "weak":
            lines.append(f"  {'':<10}{'its labels of half B:':<26} accuracy {100 * s['label_acc']:.1f}%, "
                         f"ECE {s['label_ece']:.3f}, margin {s['label_margin']:.3f}")
    if results["pgr_defined"]:
        line = f"  PGR (accuracy) = {results['pgr']:.3f}   PGR (AUROC) = {results['pgr_auroc']:.3f}"
        if "pgr_bootstrap" in results:
            line += f"   PGR (bootstrapped) = {results['pgr_bootstrap']:.3f}"
        lines.append(line)
        if results["pgr_status"] == "gap within noise":
            lines.append(f"  ...but the ceiling - weak gap ({100 * results['gap']:.1f} points) is within the test noise "
                         f"(2 standard errors: {100 * results['gap_noise']:.1f} points): this PGR carries no signal")
    else:
        lines.append("  PGR undefined: the ceiling does not beat the weak model (reported as NaN)")
    lines.append("  (ECE and AUROC on test; val ECE and margin = mean |p - 0.5| on the validation split)")
    lines.append(f"  wall time {results['wall_seconds']:.0f}s; results in {path}")
    return "\n".join(lines)
