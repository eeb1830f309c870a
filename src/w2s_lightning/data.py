"""One LightningDataModule for every task: its splits, tokenised for one model, with the
targets one stage trains and selects on (ground truth, or a supervisor's soft labels)."""

from __future__ import annotations

import datasets
import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase


class TaskDataModule(pl.LightningDataModule):
    """Batches of ``input_ids``, ``attention_mask``, ``target`` (P(label=1)) and ``label`` (GT).

    ``targets`` maps a split name to the soft labels it is trained or validated on (the
    train split and ``val`` under a weak supervisor); splits not in it use their ground
    truth. ``predict_dataloader`` yields one loader per name in ``predict_splits``.
    """

    def __init__(
        self,
        splits: datasets.DatasetDict,
        tokenizer: PreTrainedTokenizerBase | None,
        train_split: str,
        predict_splits: list[str],
        max_length: int,
        minibatch_size: int,
        eval_batch_size: int,
        targets: dict[str, np.ndarray] | None = None,
    ):
        super().__init__()
        self.splits = splits
        self.tokenizer = tokenizer
        self.train_split = train_split
        self.predict_splits = predict_splits
        self.max_length = max_length
        self.minibatch_size = minibatch_size
        self.eval_batch_size = eval_batch_size
        self.targets = targets or {}
        self.prepared: dict[str, datasets.Dataset] = {}

    def split_targets(self, name: str) -> np.ndarray:
        rows = self.splits[name]
        if name not in self.targets:
            return np.asarray(rows["label"], dtype=np.float32)
        targets = np.asarray(self.targets[name], dtype=np.float32)
        if len(targets) != len(rows):
            raise ValueError(f"{len(targets)} targets for {len(rows)} rows of {name}")
        return targets

    def setup(self, stage: str | None = None) -> None:
        if self.prepared:
            return
        for name in {self.train_split, "val", *self.predict_splits}:
            rows = self.splits[name].add_column("target", self.split_targets(name).tolist())
            self.prepared[name] = rows.map(
                lambda batch: self.tokenizer(batch["text"], truncation=True, max_length=self.max_length),
                batched=True,
                remove_columns=["text"],
                desc=f"tokenize {name}",
            ).with_format("python")

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad(
            [{"input_ids": r["input_ids"], "attention_mask": r["attention_mask"]} for r in rows],
            return_tensors="pt",
        )
        return {**batch, **self._labels(rows)}

    @staticmethod
    def _labels(rows: list[dict]) -> dict[str, torch.Tensor]:
        return {
            "target": torch.tensor([r["target"] for r in rows], dtype=torch.float32),
            "label": torch.tensor([r["label"] for r in rows], dtype=torch.long),
        }

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(self.prepared[name], batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_split, self.minibatch_size, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader("val", self.eval_batch_size, False)] if len(self.splits["val"]) else []

    def predict_dataloader(self) -> list[DataLoader]:
        return [self._loader(name, self.eval_batch_size, False) for name in self.predict_splits]


class FeatureDataModule(TaskDataModule):
    """The same splits as cached backbone features (linear probes): batches of
    ``features``, ``target`` and ``label``; nothing is tokenised."""

    def __init__(self, splits: datasets.DatasetDict, features: dict[str, torch.Tensor], **kwargs):
        super().__init__(splits, tokenizer=None, max_length=0, **kwargs)
        self.features = features

    def setup(self, stage: str | None = None) -> None:
        if self.prepared:
            return
        for name in {self.train_split, "val", *self.predict_splits}:
            labels, targets = self.splits[name]["label"], self.split_targets(name)
            self.prepared[name] = [
                {"features": f, "target": float(t), "label": int(y)}
                for f, t, y in zip(self.features[name], targets, labels)
            ]

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return {"features": torch.stack([r["features"] for r in rows]), **self._labels(rows)}
