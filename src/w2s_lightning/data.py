"""One LightningDataModule for every task: its splits, tokenised for one model, with the
targets one stage trains on (ground truth, or a weak model's soft labels)."""

from __future__ import annotations

import datasets
import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase


class TaskDataModule(pl.LightningDataModule):
    """Batches of ``input_ids``, ``attention_mask``, ``target`` (P(label=1)) and ``label`` (GT).

    ``train_split`` trains on ``train_targets`` when given, else on its ground truth;
    ``val`` is scored against ground truth; ``predict_dataloader`` yields one loader per
    name in ``predict_splits``, in that order.
    """

    def __init__(
        self,
        splits: datasets.DatasetDict,
        tokenizer: PreTrainedTokenizerBase,
        train_split: str,
        predict_splits: list[str],
        max_length: int,
        minibatch_size: int,
        eval_batch_size: int,
        train_targets: np.ndarray | None = None,
    ):
        super().__init__()
        self.splits = splits
        self.tokenizer = tokenizer
        self.train_split = train_split
        self.predict_splits = predict_splits
        self.max_length = max_length
        self.minibatch_size = minibatch_size
        self.eval_batch_size = eval_batch_size
        self.train_targets = train_targets
        self.tokenized: dict[str, datasets.Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.tokenized:
            return
        for name in {self.train_split, "val", *self.predict_splits}:
            rows = self.splits[name]
            if name == self.train_split and self.train_targets is not None:
                targets = np.asarray(self.train_targets, dtype=np.float32)
                if len(targets) != len(rows):
                    raise ValueError(f"{len(targets)} targets for {len(rows)} rows of {name}")
            else:
                targets = np.asarray(rows["label"], dtype=np.float32)
            rows = rows.add_column("target", targets.tolist())
            self.tokenized[name] = rows.map(
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
        batch["target"] = torch.tensor([r["target"] for r in rows], dtype=torch.float32)
        batch["label"] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
        return dict(batch)

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(self.tokenized[name], batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_split, self.minibatch_size, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader("val", self.eval_batch_size, False)] if len(self.splits["val"]) else []

    def predict_dataloader(self) -> list[DataLoader]:
        return [self._loader(name, self.eval_batch_size, False) for name in self.predict_splits]
