"""The results schema: one stage's record, and one experiment's record.

The pipeline writes a ``Results`` as ``results.json``; the report, the W&B summary run and
the notebooks read it back through ``Results.from_dict`` (or ``from_wandb``), so the names
of fields live here only (the roles' names: ``roles.py``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from w2s_lightning.cache import write_atomically
from w2s_lightning.metrics import gap_noise, pgr, pgr_status
from w2s_lightning.roles import BOOTSTRAP, CEILING, TRANSFER, WEAK, display_order

if TYPE_CHECKING:
    import torch

# Top-level config keys that change where and how a run reports, never its results: a rerun
# that differs only in them is the same run (pipeline.reuse_results, the report's duplicates).
# cpu_kernel_cache, cpu_heap_keep_mb: the memory oneDNN and glibc keep, never a result (memory.py).
RUN_ONLY_KEYS = (
    "threads",
    "command",
    "paths",
    "logger",
    "report",
    "reuse_results",
    "cpu_kernel_cache",
    "cpu_heap_keep_mb",
)

# What the W&B summary run holds per stage (``<role>/<field>``): what the report reads back,
# the stage's model included (a bootstrapping rung is neither the weak nor the strong model).
SUMMARY_METRICS = ("model", "acc", "auroc", "ece", "val_ece", "val_margin", "key", "reused")


@dataclass
class StageResult:
    """One built stage: its cache entry, its metrics and (not serialised) its predictions."""

    role: str
    model: str
    key: str
    path: str
    reused: bool
    metrics: dict = field(default_factory=dict)
    predictions: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, role: str, model: str, folder: Path, reused: bool) -> StageResult:
        """A stage from its cache folder. Classifier stages hold predictions and metrics; a
        generative stage holds weights only."""
        from safetensors.torch import load_file  # here: the report reads results.json and never imports torch

        metrics_file, predictions_file = folder / "metrics.json", folder / "predictions.safetensors"
        return cls(
            role=role,
            model=model,
            key=folder.name,
            path=str(folder.resolve()),
            reused=reused,
            metrics=json.loads(metrics_file.read_text()) if metrics_file.exists() else {},
            predictions=load_file(str(predictions_file)) if predictions_file.exists() else {},
        )

    def to_dict(self) -> dict:
        return {"model": self.model, "key": self.key, "path": self.path, "reused": self.reused, **self.metrics}

    @classmethod
    def from_dict(cls, role: str, record: dict) -> StageResult:
        record = dict(record)
        return cls(
            role=role,
            model=record.pop("model", ""),
            key=record.pop("key", ""),
            path=record.pop("path", ""),
            reused=record.pop("reused", None),
            metrics=record,
        )


@dataclass
class Results:
    """One experiment: its pair, its stages by role, PGR and what PGR can be trusted for."""

    task: str
    weak_model: str
    strong_model: str
    loss: str
    method: str
    seed: int
    n_test: int
    stages: dict[str, StageResult]
    config: dict
    class_balance: dict = field(default_factory=dict)
    wall_seconds: float = math.nan

    def metric(self, role: str, name: str = "acc") -> float:
        """A stage's metric (test accuracy by default); NaN where the stage or metric is absent."""
        return self.stages[role].metrics.get(name, math.nan) if role in self.stages else math.nan

    def pgr(self, student: str = TRANSFER, metric: str = "acc") -> float:
        return pgr(self.metric(WEAK, metric), self.metric(student, metric), self.metric(CEILING, metric))

    @property
    def gap(self) -> float:
        """PGR divides by this: "gap within noise" flags one the test set cannot resolve."""
        return self.metric(CEILING) - self.metric(WEAK)

    @property
    def pgr_status(self) -> str:
        return pgr_status(self.metric(WEAK), self.metric(CEILING), self.n_test)

    def to_dict(self) -> dict:
        record = {k: v for k, v in asdict(self).items() if k != "stages"}
        record["stages"] = {role: stage.to_dict() for role, stage in self.stages.items()}
        record.update(
            pgr=self.pgr(),
            pgr_auroc=self.pgr(metric="auroc"),
            pgr_defined=not math.isnan(self.pgr()),
            gap=self.gap,
            gap_noise=gap_noise(self.metric(WEAK), self.metric(CEILING), self.n_test),
            pgr_status=self.pgr_status,
        )
        if BOOTSTRAP in self.stages:
            record["pgr_bootstrap"] = self.pgr(BOOTSTRAP)
        return record

    @classmethod
    def from_dict(cls, record: dict) -> Results:
        """A ``results.json`` read back (computed fields such as ``pgr`` are recomputed)."""
        fields = {k: record[k] for k in ("task", "weak_model", "strong_model", "loss", "seed", "n_test", "config")}
        return cls(
            **fields,
            method=record.get("method", "direct"),
            stages={role: StageResult.from_dict(role, s) for role, s in record["stages"].items()},
            class_balance=record.get("class_balance", {}),
            wall_seconds=record.get("wall_seconds", math.nan),
        )

    def write(self, path: os.PathLike) -> None:
        # Whole or not at all: a report may read the sweep while this job writes.
        write_atomically(Path(path), json.dumps(self.to_dict(), indent=2, default=str))

    def wandb_summary(self) -> dict:
        """The summary run's numbers: per stage ``<role>/<metric>``, and PGR with its status."""
        record = self.to_dict()
        headline = (
            "pgr",
            "pgr_auroc",
            "pgr_defined",
            "pgr_status",
            "gap",
            "gap_noise",
            "n_test",
            "method",
            "pgr_bootstrap",
        )
        return {
            **{
                f"{role}/{k}": stage[k]
                for role, stage in record["stages"].items()
                for k in SUMMARY_METRICS
                if k in stage
            },
            **{k: record[k] for k in headline if k in record},
        }

    @classmethod
    def from_wandb(cls, summary: dict, config: dict) -> Results:
        """A W&B summary run (``wandb_summary`` and the run's config) in this schema."""
        roles = {key.split("/")[0] for key in summary if key.endswith("/acc")}
        stages = {
            role: StageResult.from_dict(role, {k: summary.get(f"{role}/{k}", math.nan) for k in SUMMARY_METRICS})
            for role in roles
        }
        for role, stage in stages.items():  # a summary written before it held the model: the pair's, where known
            if not isinstance(stage.model, str):
                stage.model = {WEAK: config["weak"]["name"], CEILING: config["strong"]["name"]}.get(role, "unknown")
        return cls(
            task=config["task"]["name"],
            weak_model=config["weak"]["name"],
            strong_model=config["strong"]["name"],
            loss=config["loss"]["name"],
            method=summary.get("method", "direct"),
            seed=config["seed"],
            n_test=summary["n_test"],
            stages=stages,
            config=config,
        )

    def console(self, path: os.PathLike) -> str:
        """The one-screen table printed at the end of a run."""
        record, nan = self.to_dict(), math.nan
        lines = [
            f"\n{self.task}: {self.weak_model} -> {self.strong_model}, loss={self.loss}, method={self.method}, "
            f"seed={self.seed}, {self.n_test} test examples",
            f"  {'stage':<10}{'model':<16}{'test acc':>10}{'AUROC':>8}{'ECE':>7}{'agree':>7}"
            f"{'val ECE':>9}{'margin':>8}  how",
        ]
        for role in display_order(self.stages):
            stage, s = self.stages[role], self.stages[role].metrics
            if "acc" not in s:
                continue  # a generative stage has weights, no predictions
            how = "reused from cache" if stage.reused else f"trained in {s.get('total_seconds', nan):.0f}s"
            agree = f"{100 * s['agreement']:>6.1f}%" if "agreement" in s else f"{'':>7}"
            lines.append(
                f"  {role:<10}{stage.model:<16}{100 * s['acc']:>9.1f}%{s['auroc']:>8.3f}{s['ece']:>7.3f}"
                f"{agree}{s.get('val_ece', nan):>9.3f}{s.get('val_margin', nan):>8.3f}  {how}"
            )
            if "label_ece" in s and role == WEAK:
                lines.append(
                    f"  {'':<10}{'its labels of half B:':<26} accuracy {100 * s['label_acc']:.1f}%, "
                    f"ECE {s['label_ece']:.3f}, margin {s['label_margin']:.3f}"
                )
        if record["pgr_defined"]:
            line = f"  PGR (accuracy) = {record['pgr']:.3f}   PGR (AUROC) = {record['pgr_auroc']:.3f}"
            if "pgr_bootstrap" in record:
                line += f"   PGR (bootstrapped) = {record['pgr_bootstrap']:.3f}"
            lines.append(line)
            if self.pgr_status == "gap within noise":
                lines.append(
                    f"  ...but the ceiling - weak gap ({100 * self.gap:.1f} points) is within the test noise "
                    f"(2 standard errors: {100 * record['gap_noise']:.1f} points): this PGR carries no signal"
                )
        else:
            lines.append("  PGR undefined: the ceiling does not beat the weak model (reported as NaN)")
        lines.append("  (ECE and AUROC on test; val ECE and margin = mean |p - 0.5| on the validation split)")
        lines.append(f"  wall time {self.wall_seconds:.0f}s; results in {path}")
        return "\n".join(lines)
