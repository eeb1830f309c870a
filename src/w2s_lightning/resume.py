"""Resuming a stage that was killed part-way, from its last in-progress checkpoint.

A stage that trains keeps a folder beside the cache, ``<stage_dir>/.resume/<kind>-<key>/``:
Lightning's own checkpoint of the fit (weights, AdamW, the LR schedule, the loops' step
counters, the selection callback's best so far) as ``resume.ckpt``, written every
``train.checkpoint_every`` optimizer steps by a ``ModelCheckpoint`` and, on SIGTERM (or SIGUSR1,
Slurm's warning before preemption), by ``ResumePoint.on_exception`` before the process exits.
The selection rule's checkpoints live there too. The next build of the same key starts the fit
from ``resume.ckpt`` (loaded with ``weights_only``: no pickle runs): the training order goes on
at the next optimizer step of the epoch it stopped in (``data.OptimizerSteps``), and every
rank's random generators (dropout, MLM masking) are as they were. A checkpoint always falls
between optimizer steps (``module.StepTraining``). The folder is removed once the stage is
published. A resumed stage ends with the metrics of an uninterrupted one (tests/test_resume.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

CHECKPOINT = "resume.ckpt"
ORDER_KEY = "w2s_train_order"


class ResumePoint(pl.Callback):
    """Saves the fit's progress into ``folder`` and says where a rerun starts from."""

    def __init__(self, folder: Path, every_n_steps: int | None):
        self.folder = Path(folder)
        self.steps_done = 0
        self.resumed: dict | None = None  # the order and generators of the checkpoint resumed from
        self._previous_usr1 = None
        # Lightning's ModelCheckpoint writes resume.ckpt every N optimizer steps, over the last one.
        self.periodic = (
            ModelCheckpoint(
                dirpath=str(self.folder),
                filename=Path(CHECKPOINT).stem,
                save_top_k=1,
                every_n_train_steps=every_n_steps,
                enable_version_counter=False,
            )
            if every_n_steps
            else None
        )

    @property
    def checkpoint(self) -> Path:
        return self.folder / CHECKPOINT

    def callbacks(self) -> list[pl.Callback]:
        return [self, self.periodic] if self.periodic else [self]

    def start_from(self) -> str | None:
        """The checkpoint a fit resumes from: ``resume.ckpt`` when an earlier build left one
        that loads without pickle, else None (a damaged one is dropped with a warning)."""
        if not self.checkpoint.exists():
            self.done()  # a fresh start: no selection checkpoints of an earlier attempt linger
            return None
        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as err:  # a kill while it was written, or a file that needs pickle
            log.warning(
                "the in-progress checkpoint %s cannot be loaded safely (%s: %s); the stage starts over",
                self.checkpoint,
                type(err).__name__,
                str(err).splitlines()[0],
            )
            self.done()
            return None
        log.info(
            "resuming from %s at optimizer step %d (epoch %d)", self.checkpoint, state["global_step"], state["epoch"]
        )
        return str(self.checkpoint)

    def done(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # ------------------------------------------------------------ hooks

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if threading.current_thread() is threading.main_thread():
            # Slurm's warning before preemption: handled as Lightning handles SIGTERM.
            self._previous_usr1 = signal.signal(signal.SIGUSR1, lambda *_: os.kill(os.getpid(), signal.SIGTERM))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_usr1()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.resumed:
            trainer.train_dataloader.sampler.resume(self.resumed["epoch"], self.resumed["steps_done"])
            torch.set_rng_state(self.resumed["cpu_rng"][trainer.global_rank])
            if "cuda_rng" in self.resumed:
                torch.cuda.set_rng_state(self.resumed["cuda_rng"][trainer.global_rank], pl_module.device)
            self.resumed = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.steps_done = batch_idx + 1  # before any ModelCheckpoint saves (Lightning runs those last)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # Every rank takes part (the checkpoint is made on all, written by rank 0).
        def every_rank(state: torch.Tensor) -> torch.Tensor:
            return trainer.strategy.all_gather(state.to(pl_module.device)).reshape(trainer.world_size, -1).cpu()

        checkpoint[ORDER_KEY] = {
            "epoch": trainer.train_dataloader.sampler.epoch,
            "steps_done": self.steps_done,
            "cpu_rng": every_rank(torch.get_rng_state()),
        }
        if pl_module.device.type == "cuda":
            checkpoint[ORDER_KEY]["cuda_rng"] = every_rank(torch.cuda.get_rng_state(pl_module.device))

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.resumed = checkpoint.get(ORDER_KEY)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_usr1()
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.checkpoint)
            log.warning(
                "stopped by SIGTERM at optimizer step %d: progress saved in %s; rerun to resume",
                trainer.global_step,
                self.checkpoint,
            )

    def _restore_usr1(self) -> None:
        if self._previous_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_usr1)
            self._previous_usr1 = None
