"""How fast a stage trains and predicts: examples, real and padded tokens per second (an image
counts as one token).

Every stage's ``metrics.json`` holds these figures, and ``scripts/benchmark.py`` reads them.
Training time runs from the first training batch to the end of the last epoch, without the
time spent validating; predicting time covers ``Trainer.predict``. Padding is the share of
the tokens the model computed that were padding.
"""

from __future__ import annotations

import time
from collections import Counter

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn

PHASES = ("train", "predict")


class Throughput(pl.Callback):
    def __init__(self):
        self.counts = {phase: Counter() for phase in PHASES}
        self.seconds = Counter()
        self._started: dict[str, float] = {}

    def _start(self, phase: str) -> None:
        self._started[phase] = time.perf_counter()

    def _stop(self, phase: str) -> None:
        if phase in self._started:
            self.seconds[phase] += time.perf_counter() - self._started.pop(phase)

    def _count(self, phase: str, batch: dict[str, torch.Tensor]) -> None:
        counts, mask = self.counts[phase], batch.get("attention_mask")
        if "image" in batch:  # an image counts as one token: the plan's rate per unit of work
            mask = torch.ones(len(batch["image"]), 1)
        if mask is None:  # probes train on features, which have no tokens
            counts["examples"] += len(batch["label"])
            return
        counts["examples"] += len(mask)  # also language-model batches (generative), which have no label
        counts["tokens"] += int(mask.sum())
        counts["padded_tokens"] += mask.numel()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start("train")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop("train")

    def on_validation_start(self, trainer, pl_module) -> None:
        self._stop("train")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # validating within a fit: training goes on
            self._start("train")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for micro_batch, share in zip(batch["micro_batches"], batch["shares"], strict=True):  # one optimizer step
            if share:  # not a stand-in that evens out the ranks
                self._count("train", micro_batch)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._start("predict")

    def on_predict_end(self, trainer, pl_module) -> None:
        self._stop("predict")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._count("predict", batch)

    def metrics(self) -> dict[str, float]:
        """``<phase>_examples_per_s``, ``<phase>_tokens_per_s`` (real tokens),
        ``<phase>_padded_tokens_per_s`` and ``<phase>_padding`` for each phase that ran."""
        figures = {}
        for phase in PHASES:
            counts, seconds = self.counts[phase], self.seconds[phase]
            if not seconds or not counts["examples"]:
                continue
            figures[f"{phase}_examples_per_s"] = counts["examples"] / seconds
            if counts["padded_tokens"]:
                figures[f"{phase}_tokens_per_s"] = counts["tokens"] / seconds
                figures[f"{phase}_padded_tokens_per_s"] = counts["padded_tokens"] / seconds
                figures[f"{phase}_padding"] = 1 - counts["tokens"] / counts["padded_tokens"]
        return figures
