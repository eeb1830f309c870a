"""Builds a recipe's stage requests, each once, through the stage cache.

For every request the runner asks ``stage_key`` for its spec, and the cache either hands
back the folder built earlier under that key or builds it now: train (or relabel), select the
checkpoint, predict, and write ``predictions.safetensors`` and ``metrics.json``. The task's
splits are never changed; a request's rows are cut from them by ``Rows.indices``.

Why it is long: one builder per stage kind (classifier, features, generative, relabel) and
the parts they share (Trainer, DataModule, tokenisation, gathered predictions).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import datasets
import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from w2s_lightning import generative, parallel, stage_key, tracking
from w2s_lightning.cache import StageCache
from w2s_lightning.data import FeatureDataModule, ImageDataModule, TaskDataModule, tokenize
from w2s_lightning.errors import ConfigError
from w2s_lightning.memory import drop_optimizer_state, keep_freed_memory, limit_kernel_cache, release_memory
from w2s_lightning.methods import LABELLER, StageRequest, epochs_of, finetune_of
from w2s_lightning.metrics import agreement, evaluate
from w2s_lightning.models import LinearProbe, load_classifier, load_tokenizer, usable_length
from w2s_lightning.module import FeatureModule, W2SModule
from w2s_lightning.relabel import TRAIN, RelabelInputs
from w2s_lightning.results import StageResult
from w2s_lightning.resume import ResumePoint
from w2s_lightning.roles import FEATURES
from w2s_lightning.speed import Throughput

log = logging.getLogger(__name__)
# The name a stage's training rows go by beside the task's splits: never a split's own, so a
# student that trains on part of half B still predicts the whole of it.
TRAINING = "training_rows"


def accumulation(cfg: DictConfig, model_cfg: DictConfig) -> int:
    """Micro-batches per optimizer step on one device: every step sees ``train.batch_size``
    examples, however many ranks share its micro-batches (each takes an equal number)."""
    per_step = model_cfg.minibatch_size * parallel.world_size(cfg)
    if cfg.train.batch_size % per_step:
        ranks = (
            f" x {parallel.world_size(cfg)} ranks (trainer.devices x num_nodes)"
            if per_step != model_cfg.minibatch_size
            else ""
        )
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is not a multiple of "
            f"{model_cfg.name}'s minibatch_size={model_cfg.minibatch_size}{ranks}; change one of them."
        )
    return cfg.train.batch_size // model_cfg.minibatch_size


@contextmanager
def exit_on_sigterm():
    """A fit stopped by SIGTERM has saved its progress (ResumePoint): the process exits as a
    terminated one does."""
    try:
        yield
    except SIGTERMException:
        raise SystemExit(128 + signal.SIGTERM) from None


class StageRunner:
    """The stages of one experiment over one set of splits, by role."""

    def __init__(self, cfg: DictConfig, splits: datasets.DatasetDict):
        # Before any stage runs a kernel, whoever builds stages (run.py, the benchmark, scripts).
        limit_kernel_cache(cfg.cpu_kernel_cache)
        keep_freed_memory(cfg.cpu_heap_keep_mb)
        self.cfg = cfg
        self.splits = splits
        self.data_key = stage_key.fingerprint(splits)
        self.cache = StageCache(cfg.paths.stage_dir)
        self.tokenizations: dict[tuple, tuple] = {}

    def run(self, requests: list[StageRequest]) -> dict[str, StageResult]:
        built: dict[str, StageResult] = {}
        for request in requests:
            if request.role in built:
                raise ConfigError(f"the method asks for the role {request.role!r} twice; roles name one stage each.")
            built[request.role] = self.build(request, built)
        return built

    def build(self, request: StageRequest, built: dict[str, StageResult]) -> StageResult:
        supervisor = self.earlier(request, request.supervisor, "supervisor", built)
        init = self.earlier(request, request.init, "init", built)
        others = [self.earlier(request, role, "others", built) for role in request.others]
        request = self.trimmed(request)
        features = {r.predicts[0]: self.build(r, built) for r in self.feature_requests(request)} or None
        keys = self.dependency_keys(
            request, lambda role: built[role].key, [stage.key for stage in (features or {}).values()]
        )
        kind, spec = self.entry(request, keys)
        builder = getattr(self, f"_{request.kind}")
        progress = self.cache.resume_folder(kind, spec)
        inputs = dict(supervisor=supervisor, init=init, features=features, others=others, progress=progress)
        folder, reused = self.cache.get_or_build(
            kind, spec, lambda out: builder(out, request, **inputs), ranks=parallel
        )
        if not reused:
            release_memory()
        shutil.rmtree(progress, ignore_errors=True)  # published: its in-progress checkpoints served their purpose
        model = f"{supervisor.model} relabelled" if request.kind == "relabel" else request.model.name
        if reused:
            log.info(
                "%s: reusing %s (%s) from the cache, not retraining: %s", request.role, model, request.kind, folder
            )
        return StageResult.load(request.role, model, folder, reused)

    @staticmethod
    def earlier(
        request: StageRequest, role: str | None, field: str, built: dict[str, StageResult]
    ) -> StageResult | None:
        """The built stage ``role`` that ``request`` names as its ``field`` (supervisor, init,
        others), if any."""
        if role is not None and role not in built:
            raise ConfigError(
                f"stage {request.role!r} names {role!r} as its {field}, but no earlier request "
                f"builds it; built so far: {sorted(built)}."
            )
        return built.get(role)

    def trimmed(self, request: StageRequest) -> StageRequest:
        """``request`` without the empty splits it would predict (``task.n_val=0``)."""
        return replace(request, predicts=tuple(n for n in request.predicts if len(self.splits[n])))

    def feature_requests(self, request: StageRequest) -> list[StageRequest]:
        """The frozen features a request reads, one stage per split: a classifier's under
        ``finetune=probe``, and the model's of a relabelling that names one (relabel.py)."""
        if request.kind == "relabel" and request.model is not None:
            splits = request.predicts
        elif request.kind == "classifier" and finetune_of(self.cfg, request.model).name == "probe":
            splits = ("train_a", *LABELLER)
        else:
            return []
        return [
            StageRequest(f"{FEATURES}:{split}", request.model, init=request.init, kind="features", predicts=(split,))
            for split in splits
            if len(self.splits[split])
        ]

    @staticmethod
    def dependency_keys(request: StageRequest, key_of, feature_keys: list[str]) -> dict:
        """The cache keys of the stages ``request`` depends on; ``key_of(role)``: a built (or
        planned) stage's key. The plan computes keys with this too, so both agree."""
        return {
            "supervisor": key_of(request.supervisor) if request.supervisor else None,
            "init": key_of(request.init) if request.init else None,
            "features": "+".join(feature_keys) or None,
            "others": [key_of(role) for role in request.others] or None,
        }

    def entry(self, request: StageRequest, keys: dict[str, str | None]) -> tuple[str, dict]:
        """The cache entry's kind and spec of ``request``; ``keys``: the entries it depends on."""
        # A split's frozen features depend on its texts and the model only: keyed by that
        # split alone, test's are computed once and shared by every seed.
        data_key = (
            stage_key.fingerprint({request.predicts[0]: self.splits[request.predicts[0]]})
            if request.kind == "features"
            else self.data_key
        )
        return stage_key.kind_of(request), stage_key.spec(self.cfg, data_key, request, keys)

    # ------------------------------------------------------------ builders, one per kind

    def _generative(self, out: Path, request: StageRequest, progress: Path, **_) -> None:
        model_cfg = request.model
        log.info("generative: fine-tuning %s on the task's unlabeled text (%s)", model_cfg.name, model_cfg.objective)
        logger = tracking.stage_logger(self.cfg, request.role, model_cfg.name)
        resume = ResumePoint(progress, self.cfg.train.checkpoint_every)
        trainer = self.trainer(model_cfg, request.options["epochs"], out, logger, resume=resume)
        with tracking.finished_when_done(logger), exit_on_sigterm():
            generative.finetune(
                self.cfg,
                model_cfg,
                request.options,
                self.splits,
                trainer,
                out,
                per_step=accumulation(self.cfg, model_cfg),
                ckpt_path=resume.start_from(),
            )

    def _features(self, out: Path, request: StageRequest, init: StageResult | None, **_) -> None:
        # Not resumed part-way, unlike training stages: one forward pass over one split, and the
        # splits already done are published stages that a rerun reuses (docs/reference.md).
        log.info("features: computing %s's frozen features of %s", request.model.name, request.predicts[0])
        classifier = load_classifier(
            self.weights(request.model, init),
            self.cfg.paths.zoo_dir,
            dropout=False,
            fused_gelu=self.cfg.train.fused_gelu,
        )
        datamodule = self.datamodule(request, self.kept_rows(request, None), {}, None)
        trainer = self.trainer(request.model, 1, out, False)
        outputs = trainer.predict(FeatureModule(classifier), datamodule=datamodule)
        self.save(out, trainer, datamodule, request.predicts, outputs)

    def _relabel(
        self,
        out: Path,
        request: StageRequest,
        supervisor: StageResult,
        features: dict[str, StageResult] | None,
        others: list[StageResult],
        **_,
    ) -> None:
        """The rule ``options['rule']`` (a config with ``_target_``, relabel.py) applied to the
        supervisor's labels of the splits the request predicts; NaN marks a dropped row."""
        rule = request.options["rule"]
        log.info("%s: %s applied to %s's labels", request.role, rule["_target_"], supervisor.role)

        def of(stage: StageResult) -> dict[str, torch.Tensor]:
            return {n: stage.predictions[n] for n in request.predicts}

        inputs = RelabelInputs(
            labels=of(supervisor),
            features=features and {split: stage.predictions[split] for split, stage in features.items()},
            others=[of(other) for other in others],
        )
        relabelled = hydra.utils.instantiate(rule, _partial_=True)(inputs)
        save_file(
            {n: relabelled[n].float().contiguous() for n in request.predicts}, str(out / "predictions.safetensors")
        )
        metrics = evaluate(relabelled["test"], torch.tensor(self.splits["test"]["label"]))
        metrics["kept"] = float(relabelled[TRAIN].isfinite().float().mean())  # the share of half B a filter kept
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    def _classifier(
        self,
        out: Path,
        request: StageRequest,
        supervisor: StageResult | None,
        init: StageResult | None,
        features: dict[str, StageResult] | None,
        progress: Path,
        **_,
    ) -> None:
        """Fit on the request's rows (from the in-progress checkpoint in ``progress`` when a
        killed build left one), predict with the checkpoint ``select`` chose (students only),
        and write the predictions and metrics into ``out``."""
        started, cfg, model_cfg, rows = time.time(), self.cfg, request.model, request.rows
        log.info(
            "%s: training %s on %s",
            request.role,
            model_cfg.name,
            f"{supervisor.role}'s labels of {rows.name}" if supervisor else "ground truth",
        )
        kept = self.kept_rows(request, supervisor)
        if features is not None:
            features = {split: stage.predictions[split] for split, stage in features.items()}
            features[TRAINING] = features[rows.split][kept]
        targets = self.targets(request, supervisor, kept)
        datamodule = self.datamodule(request, kept, targets, features)
        module = self.module(request, init, features)
        if supervisor and hasattr(module.loss, "fit_to_labels"):  # a loss set from the labels (window: midweak)
            module.loss.fit_to_labels(targets[TRAINING])
        logger = tracking.stage_logger(cfg, request.role, model_cfg.name)
        resume = ResumePoint(progress, cfg.train.checkpoint_every)
        trainer = self.trainer(
            model_cfg, epochs_of(cfg, model_cfg), out, logger, student=supervisor is not None, resume=resume
        )
        with tracking.finished_when_done(logger):
            with exit_on_sigterm():
                trainer.fit(module, datamodule=datamodule, ckpt_path=resume.start_from(), weights_only=True)
            train_seconds = time.time() - started
            drop_optimizer_state(trainer)
            selection = next((c for c in trainer.checkpoint_callbacks if c is not resume.periodic), None)
            best = selection.best_model_path if selection else None
            outputs = trainer.predict(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
            predictions = self.save(out, trainer, datamodule, request.predicts, outputs)
            metrics = self.scores(predictions, supervisor)
            metrics.update(
                train_seconds=train_seconds,
                total_seconds=time.time() - started,
                n_train=len(datamodule.splits[TRAINING]),
                selection=cfg.select.name if supervisor else "last",
                selected_step=int(Path(best).stem.split("step=")[1]) if best else trainer.global_step,
                **self.throughput(trainer).metrics(),
            )
            if logger:
                logger.log_metrics({f"test/{k}": v for k, v in metrics.items() if isinstance(v, float)})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    def module(
        self, request: StageRequest, init: StageResult | None, features: dict[str, torch.Tensor] | None
    ) -> W2SModule:
        """The classifier to train (a linear probe on ``features``, else the model from its weights
        or ``init``'s), wrapped with the request's loss and the recipe's optimiser settings."""
        cfg, model_cfg = self.cfg, request.model
        finetune = finetune_of(cfg, model_cfg)
        if features is not None:
            classifier = LinearProbe(features["train_a"].shape[1])
        else:
            classifier = load_classifier(
                self.weights(model_cfg, init),
                cfg.paths.zoo_dir,
                finetune,
                seed=cfg.seed,
                dropout=cfg.train.dropout,
                pairwise=cfg.task.pairwise,
                fused_gelu=cfg.train.fused_gelu,
            )
        if cfg.train.compile:
            classifier.compile(dynamic=True)  # in place: the state dict keeps its names
        return W2SModule(
            classifier,
            hydra.utils.instantiate(request.loss.fn),
            lr=finetune.lr or model_cfg.lr,
            head_lr=cfg.train.head_lr,
            weight_decay=cfg.train.weight_decay,
            lr_scheduler=cfg.train.lr_scheduler,
            warmup_frac=cfg.train.warmup_frac,
            adamw=cfg.train.adamw,
            sparse_embedding_grad=cfg.train.sparse_embedding_grad,
            cpu_eager_attention_tokens=cfg.train.cpu_eager_attention_tokens,
            predict_dtype=cfg.train.predict_dtype,
            precast_predict_weights=cfg.train.precast_predict_weights,
            role=request.role,
        )

    def scores(self, predictions: dict[str, torch.Tensor], supervisor: StageResult | None) -> dict:
        """Test accuracy, AUROC and calibration; calibration where a researcher may look without
        touching test (val, and half B's labels for a stage that supervises another); a student's
        agreement with its supervisor."""
        truth = {name: torch.tensor(self.splits[name]["label"]) for name in predictions}
        metrics = evaluate(predictions["test"], truth["test"])
        for prefix, name in (("val", "val"), ("label", "train_b")):
            if name in predictions:
                metrics.update({f"{prefix}_{k}": v for k, v in evaluate(predictions[name], truth[name]).items()})
        if supervisor:
            metrics.update(agreement(predictions["test"], supervisor.predictions["test"], truth["test"]))
        return metrics

    # ------------------------------------------------------------ parts

    @staticmethod
    def with_rows(request: StageRequest, kept: list[int], splits: datasets.DatasetDict) -> datasets.DatasetDict:
        """``splits`` plus the request's ``kept`` rows under the name ``TRAINING``: a new dict, so
        the splits themselves never change (a student predicts the whole of its split)."""
        return datasets.DatasetDict({**splits, TRAINING: splits[request.rows.split].select(kept)})

    def tokenized(self, model_cfg: DictConfig):
        """The tokenizer of ``model_cfg`` and the task's splits tokenised by it: once per
        tokenizer and length limit, shared by every stage of the run that reads them."""
        key = (model_cfg.path, model_cfg.max_length, model_cfg.trust_remote_code)
        if key not in self.tokenizations:
            tokenizer = load_tokenizer(model_cfg, self.cfg.paths.zoo_dir)
            length = usable_length(model_cfg, tokenizer, self.cfg.paths.zoo_dir)
            self.tokenizations[key] = tokenizer, tokenize(self.splits, tokenizer, length)
        return self.tokenizations[key]

    def kept_rows(self, request: StageRequest, supervisor: StageResult | None) -> list[int]:
        """The rows of the request's split it trains on: its part (``Rows.indices``), without
        the rows its supervisor dropped (a filter's NaN labels, relabel.py)."""
        split = request.rows.split
        rows = list(request.rows.indices(len(self.splits[split])))
        if supervisor is None:
            return rows
        if split not in supervisor.predictions:
            raise ConfigError(
                f"stage {request.role!r} trains on {supervisor.role}'s labels of {split}, "
                f"but {supervisor.role} predicts only {sorted(supervisor.predictions)}."
            )
        dropped = supervisor.predictions[split].isnan().tolist()
        kept = [i for i in rows if not dropped[i]]
        if not kept:
            raise ConfigError(f"stage {request.role!r}: {supervisor.role} dropped every row of {split}; keep some.")
        return kept

    def targets(
        self, request: StageRequest, supervisor: StageResult | None, kept: list[int]
    ) -> dict[str, torch.Tensor]:
        """What a student trains and validates on: its supervisor's soft labels of its ``kept``
        rows and of ``val``, row for row. Nothing for a stage on ground truth."""
        if supervisor is None:
            return {}
        return {
            TRAINING: supervisor.predictions[request.rows.split][kept],
            "val": supervisor.predictions.get("val", torch.empty(0)),
        }

    def trainer(
        self,
        model_cfg: DictConfig,
        epochs: int,
        out: Path,
        logger,
        student: bool = False,
        resume: ResumePoint | None = None,
    ) -> pl.Trainer:
        """A Trainer from ``conf/trainer``. A student also gets the callbacks of its selection
        rule (``conf/select``): a ``ModelCheckpoint`` that keeps its best weights, perhaps
        ``EarlyStopping``. A stage that can resume gets ``resume``'s callbacks, and its
        selection checkpoints live beside its in-progress one (they must outlive a kill).
        Lightning's own checkpointing is on exactly when a ``ModelCheckpoint`` is there."""
        callbacks = [hydra.utils.instantiate(c) for c in self.cfg.select.callbacks.values() if c] if student else []
        for callback in callbacks:
            if isinstance(callback, ModelCheckpoint):
                callback.dirpath = str(resume.folder / "selection" if resume else out / "checkpoints")
        callbacks += [Throughput(), *(resume.callbacks() if resume else [])]
        return hydra.utils.instantiate(
            self.cfg.trainer,
            max_epochs=epochs,
            logger=logger,
            default_root_dir=self.cfg.paths.output_dir,
            callbacks=callbacks,
            enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
            val_check_interval=self.cfg.select.val_every,
            use_distributed_sampler=False,  # the loaders share their rows among ranks themselves (data.py)
        )

    @staticmethod
    def throughput(trainer: pl.Trainer) -> Throughput:
        return next(c for c in trainer.callbacks if isinstance(c, Throughput))

    def datamodule(
        self,
        request: StageRequest,
        kept: list[int],
        targets: dict[str, torch.Tensor],
        features: dict[str, torch.Tensor] | None,
    ) -> TaskDataModule:
        """The request's ``kept`` rows and the splits it predicts, as cached features (probes),
        images, or tokenised for its model, with ``targets`` in place of the ground truth."""
        model_cfg = request.model
        common = dict(
            train_split=TRAINING,
            predict_splits=list(request.predicts),
            targets={name: t.numpy() for name, t in targets.items()},
            minibatch_size=model_cfg.minibatch_size,
            per_step=accumulation(self.cfg, model_cfg),
            seed=self.cfg.seed,
            eval_batch_size=model_cfg.eval_batch_size,
        )
        if features is not None:
            return FeatureDataModule(self.with_rows(request, kept, self.splits), features, **common)
        if self.cfg.task.image_dir:
            return ImageDataModule(self.with_rows(request, kept, self.splits), **common)
        tokenizer, splits = self.tokenized(model_cfg)
        return TaskDataModule(
            self.with_rows(request, kept, splits),
            tokenizer,
            length_buckets=self.cfg.train.length_buckets,
            minibatch_tokens=model_cfg.minibatch_tokens,
            eval_batch_tokens=model_cfg.eval_batch_tokens,
            pad_to_multiple_of=self.cfg.train.pad_to_multiple_of,
            **common,
        )

    @staticmethod
    def save(
        out: Path, trainer: pl.Trainer, datamodule: TaskDataModule, names: tuple[str, ...], outputs
    ) -> dict[str, torch.Tensor]:
        """Predictions per split, gathered from every rank, back in row order, written to
        ``out/predictions.safetensors``."""
        if len(names) == 1:  # Lightning unnests a single loader's batches
            outputs = [outputs]
        predictions = {}
        for name, batches in zip(names, outputs, strict=True):
            counts = [len(datamodule.rows_of_rank(name, r, trainer.world_size)) for r in range(trainer.world_size)]
            shares = parallel.gather(trainer, torch.cat(batches).float(), counts)
            predictions[name] = datamodule.in_row_order(name, shares).contiguous()
        save_file(predictions, str(out / "predictions.safetensors"))
        return predictions

    @staticmethod
    def weights(model_cfg: DictConfig, init: StageResult | None) -> DictConfig:
        """``model_cfg``, loading from a generative stage's weights when there is one."""
        return model_cfg if init is None else OmegaConf.merge(model_cfg, {"path": str(Path(init.path) / "model")})
