"""The LightningModules: ``W2SModule`` trains a Classifier with one of the losses,
``FeatureModule`` predicts a frozen model's pooled features (probes), and
``LanguageModelModule`` trains a model's own language-model objective (generative fine-tuning).

Why it is long: the training modules share ``StepTraining``, the loop that makes one training
step one optimizer step, with the speed and memory settings that act inside it (sparse
embedding gradients, the prediction dtype) and the AdamW they build; apart, each file would
import half of the others."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.profiler import record_function
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC
from transformers import get_scheduler

from w2s_lightning import faults
from w2s_lightning.errors import ConfigError, TrainingError
from w2s_lightning.memory import densify_gradients, sparse_embedding_gradients
from w2s_lightning.models import cast_matmul_weights, sdpa_replaced_by

Loss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
# The low precision of each of Lightning's mixed-precision settings: what its autocast casts to.
MIXED_PRECISION_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def binary_metrics(prefix: str) -> MetricCollection:
    return MetricCollection({"acc": BinaryAccuracy(), "auroc": BinaryAUROC()}, prefix=prefix)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a batch feeds the model (token ids and mask, images, or probe features): all but
    its targets, ground truth and the ``real`` mark of the ranks' padding rows."""
    return {k: v for k, v in batch.items() if k not in ("target", "label", "real")}


class StepTraining(pl.LightningModule):
    """A training step that is one whole optimizer step: the loader yields this rank's
    micro-batches of the step with their shares of its rows (``data.OptimizerSteps``), and the
    step accumulates them itself (Lightning's manual optimisation). So the step's loss is the
    mean over its rows whatever the number of ranks or an uneven last step, a loss can look at
    the whole step before the first backward (``begin_step``), and a checkpoint never falls
    between micro-batches of one step (a SIGTERM stops the fit after the step it arrived in).
    """

    def __init__(self, sparse_embedding_grad: bool = False, cpu_eager_attention_tokens: int | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.sparse_embedding_grad = sparse_embedding_grad
        self.cpu_eager_attention_tokens = cpu_eager_attention_tokens
        self.dense_grads: dict[torch.nn.Parameter, torch.Tensor] = {}

    def on_fit_start(self) -> None:
        # One CPU device only: DDP and FSDP reduce dense gradients, and on a GPU the caching
        # allocator hands the same block back each micro-batch, with nothing to fault in.
        if self.sparse_embedding_grad and self.trainer.world_size == 1 and self.device.type == "cpu":
            sparse_embedding_gradients(self)

    def on_fit_end(self) -> None:
        self.dense_grads.clear()  # predicting needs no gradient buffers

    def training_attention(self, batch: dict):
        """Where a micro-batch is trained, forward and backward: with eager attention for rows of
        at most ``cpu_eager_attention_tokens`` tokens on a CPU, whose SDPA backward (the flash
        kernel) costs milliseconds a layer even for a few tokens (docs/speed.md, "Eager attention
        by length"); with the model's own choice otherwise. Eager keeps each layer's L x L
        attention weights for the backward pass, which costs time and memory for long rows."""
        ids = batch.get("input_ids")
        short = ids is not None and ids.shape[-1] <= (self.cpu_eager_attention_tokens or 0)
        return sdpa_replaced_by(self, "eager") if short and self.device.type == "cpu" else nullcontext()

    def micro_batch_loss(self, batch: dict, step_frac: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The mean loss over ``batch``, and figures to log (means over it too)."""
        raise NotImplementedError

    def begin_step(self, micro_batches: list[dict], shares: list[float], rows: int) -> None:
        """Called before the step's first micro-batch; nothing by default."""

    def training_step(self, step: dict, batch_idx: int) -> None:
        # The record_function labels cost nothing unless a profiler runs: scripts/benchmark.py
        # project --profile reads them to split a step into forward, backward and the optimizer.
        with record_function("w2s.step"):
            optimizer, schedule = self.optimizers(), self.lr_schedulers()
            step_frac = self.global_step / max(1, self.trainer.estimated_stepping_batches)
            batches, shares = step["micro_batches"], step["shares"]
            with record_function("w2s.forward"):  # a loss's look at the whole step: forward only
                self.begin_step(batches, shares, step["rows"])
            logged: dict[str, torch.Tensor] = {}
            for i, (batch, share) in enumerate(zip(batches, shares, strict=True)):
                faults.reached("train_step")
                with self.training_attention(batch):
                    with record_function("w2s.forward"):
                        loss, figures = self.micro_batch_loss(batch, step_frac)
                    # DDP and FSDP average the ranks' gradients: times world, the step's gradient is the
                    # sum over its rows / its rows. Gradients are reduced once, after the last micro-batch.
                    last = i == len(batches) - 1
                    no_sync = (
                        nullcontext() if last else getattr(self.trainer.strategy, "block_backward_sync", nullcontext)()
                    )
                    with no_sync, record_function("w2s.backward"):
                        self.manual_backward(loss * share * self.trainer.world_size)
                for name, value in {"train/loss": loss, **figures}.items():
                    logged[name] = logged.get(name, 0.0) + value.detach() * share
            with record_function("w2s.optimizer"):
                densify_gradients(self.parameters(), self.dense_grads)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
            # This rank's share of the step's mean: summed over the ranks it is the step's.
            self.log_dict(logged, prog_bar=True, reduce_fx="sum", sync_dist=self.trainer.world_size > 1)


class W2SModule(StepTraining):
    def __init__(
        self,
        classifier: torch.nn.Module,
        loss: Loss,
        lr: float,
        head_lr: float | None = None,
        weight_decay: float = 0.0,
        lr_scheduler: str = "cosine",
        warmup_frac: float = 0.0,
        adamw: str = "fused",
        sparse_embedding_grad: bool = False,
        cpu_eager_attention_tokens: int | None = None,
        predict_dtype: str | None = None,
        precast_predict_weights: bool = False,
        role: str = "train",
    ):
        super().__init__(sparse_embedding_grad, cpu_eager_attention_tokens)
        self.predict_dtype = None  # the dtype the weights are cast to when prediction starts
        if predict_dtype is not None:
            self.predict_dtype = getattr(torch, predict_dtype, None)
            if not (isinstance(self.predict_dtype, torch.dtype) and self.predict_dtype.is_floating_point):
                raise ConfigError(
                    f"train.predict_dtype={predict_dtype!r} is not a floating-point torch dtype; use bfloat16, "
                    "float16, or null (predict with the weights as trained)."
                )
        self.save_hyperparameters(ignore=["classifier", "loss"])
        self.classifier = classifier
        self.loss = loss
        self.val_metrics = binary_metrics("val/")
        # Agreement with the stage's own supervisor on val: what select=weak_val uses.
        self.val_supervisor_acc = BinaryAccuracy()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits from the model inputs in ``batch``."""
        return self.classifier(**model_inputs(batch))

    def micro_batch_loss(self, batch: dict, step_frac: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self(batch)
        loss = self.loss(logits, batch["target"], step_frac)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"stage '{self.hparams.role}': the loss is {loss.item()} at step {self.global_step}. "
                f"Lower the learning rate (now {self.hparams.lr:g}, e.g. model@strong.lr=...), "
                "or train in full precision (trainer.precision=32-true)."
            )
        agreement = (logits.argmax(dim=-1) == (batch["target"] > 0.5).long()).float().mean()
        return loss, {"train/acc_vs_target": agreement}

    def begin_step(self, micro_batches: list[dict], shares: list[float], rows: int) -> None:
        """A loss that needs the student's predictions on the whole step (aux_conf's hardening
        threshold, over the step's rows on every rank) gets them from a forward pass without
        gradients, which replays the training pass's dropout (the RNG is forked and restored).
        A step of one micro-batch on one device needs none: the loss takes them from it."""
        if not getattr(self.loss, "needs_step_predictions", False):
            return
        if len(micro_batches) == 1 and self.trainer.world_size == 1:
            self.loss.begin_step(None, None)
            return
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            p1 = [self(batch).softmax(dim=-1)[:, 1].float() for batch in micro_batches]
        real = torch.cat(
            [torch.full((len(p),), share > 0, device=p.device) for p, share in zip(p1, shares, strict=True)]
        )
        mine = torch.cat(p1)[real]  # not a stand-in's
        targets = torch.cat([b["target"].float() for b in micro_batches])[real]
        # Padded with NaN to the step's rows, the ranks' shares gather into one tensor.
        gathered = [self.all_gather(torch.cat([v, v.new_full((rows - len(v),), torch.nan)])) for v in (mine, targets)]
        p1_all, target_all = (g.flatten() for g in gathered)
        kept = ~p1_all.isnan()
        self.loss.begin_step(p1_all[kept], target_all[kept])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        real = batch["real"]  # not the copies that even out the ranks' batches (data.py)
        p1 = self(batch).softmax(dim=-1)[:, 1][real]
        self.val_metrics.update(p1, batch["label"][real])
        self.val_supervisor_acc.update(p1, (batch["target"][real] > 0.5).long())
        self.log_dict(self.val_metrics, prog_bar=True)
        self.log("val/supervisor_acc", self.val_supervisor_acc)

    def on_predict_start(self) -> None:
        mixed = MIXED_PRECISION_DTYPES.get(self.trainer.precision)
        if self.predict_dtype is not None:
            # Transformers' bf16_full_eval: once a stage only predicts, its fp32 master weights
            # serve nothing, and weights cast once spare autocast casting each of them again for
            # every batch. The residual stream between the matmuls is then rounded to the dtype too.
            self.classifier.to(self.predict_dtype)
        elif self.hparams.precast_predict_weights and mixed and not isinstance(self.trainer.strategy, FSDPStrategy):
            # Only the weights autocast casts anyway: the same predictions, bit for bit. FSDP's
            # shards are cast by its own mixed-precision policy.
            cast_matmul_weights(self.classifier, mixed)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Soft labels: P(label = 1) per example."""
        faults.reached("predict_batch")
        return self(batch).softmax(dim=-1)[:, 1]

    def configure_optimizers(self):
        head = [p for p in self.classifier.head.parameters() if p.requires_grad]
        head_ids = {id(p) for p in head}
        body = [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]
        groups = [{"params": body}, {"params": head, "lr": self.hparams.head_lr or self.hparams.lr}]
        return adamw_schedule(
            self,
            [g for g in groups if g["params"]],
            self.hparams.lr,
            self.hparams.weight_decay,
            self.hparams.lr_scheduler,
            self.hparams.warmup_frac,
            self.hparams.adamw,
        )


ADAMW_IMPLEMENTATIONS = {
    "fused": {"fused": True},
    "foreach": {"foreach": True},
    "for_loop": {"foreach": False, "fused": False},
}


def adamw_schedule(
    module: pl.LightningModule,
    params,
    lr: float,
    weight_decay: float = 0.0,
    scheduler: str = "cosine",
    warmup_frac: float = 0.0,
    implementation: str = "fused",
) -> dict:
    """AdamW over ``params`` (parameters or groups with their own ``lr``) with a per-step
    transformers schedule over the whole fit: Lightning's ``configure_optimizers`` answer.
    ``implementation``: one fused kernel for all parameters, a few batched (foreach) ones, or a
    Python loop over the parameters; the same update, at different speeds."""
    if implementation not in ADAMW_IMPLEMENTATIONS:
        raise ConfigError(f"train.adamw={implementation!r} is unknown; choose one of {sorted(ADAMW_IMPLEMENTATIONS)}.")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **ADAMW_IMPLEMENTATIONS[implementation])
    total = module.trainer.estimated_stepping_batches
    schedule = get_scheduler(scheduler, optimizer, num_warmup_steps=int(warmup_frac * total), num_training_steps=total)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class FeatureModule(pl.LightningModule):
    """Predicts a classifier's pooled features (for linear probes); never trains."""

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.classifier = classifier

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self.classifier.pool(**model_inputs(batch))


class LanguageModelModule(StepTraining):
    def __init__(
        self, model: torch.nn.Module, lr: float, adamw: str = "fused", cpu_eager_attention_tokens: int | None = None
    ):
        super().__init__(cpu_eager_attention_tokens=cpu_eager_attention_tokens)
        self.model = model
        self.lr = lr
        self.adamw = adamw

    def micro_batch_loss(self, batch: dict, step_frac: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = self.model(**batch).loss
        if not torch.isfinite(loss):
            raise TrainingError(
                f"generative fine-tuning: the loss is {loss.item()}; lower method.lr "
                f"(now {self.lr:g}) or use trainer.precision=32-true."
            )
        return loss, {}

    def configure_optimizers(self):
        return adamw_schedule(
            self, [p for p in self.parameters() if p.requires_grad], self.lr, implementation=self.adamw
        )
