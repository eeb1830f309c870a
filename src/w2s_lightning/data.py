"""One LightningDataModule for every task: its splits, tokenised for one model, with the
targets one stage trains and selects on (ground truth, or a supervisor's soft labels).

Why it is long: the samplers that make training order, length buckets, rank shares and
resuming mid-epoch exact are small classes that only make sense beside the DataModule.
"""

from __future__ import annotations

import datasets
import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler
from transformers import PreTrainedTokenizerBase

from w2s_lightning import faults


class ShuffledBuckets(Sampler[list[int]]):
    """Micro-batches of rows of similar length, in a random order: little padding, and the
    randomness a sweep over seeds needs. Each epoch shuffles the rows, cuts them into buckets
    of ``buckets`` micro-batches, sorts each bucket by length, cuts it into micro-batches and
    shuffles those."""

    def __init__(self, lengths: list[int], minibatch_size: int, buckets: int, generator: torch.Generator):
        self.lengths, self.minibatch_size, self.buckets, self.generator = lengths, minibatch_size, buckets, generator

    def __len__(self) -> int:
        size = self.minibatch_size * self.buckets
        full, rest = divmod(len(self.lengths), size)
        return full * self.buckets + -(-rest // self.minibatch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        size = self.minibatch_size * self.buckets
        batches = []
        for start in range(0, len(order), size):
            bucket = sorted(order[start : start + size], key=self.lengths.__getitem__)
            batches += [bucket[i : i + self.minibatch_size] for i in range(0, len(bucket), self.minibatch_size)]
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i]


class RankShare(Sampler[list[int]]):
    """One rank's micro-batches of ``batches``: every ``world``-th from its rank on, so that the
    ranks' micro-batches of one optimizer step are the ones a single device would accumulate.
    Every rank gets as many (DDP steps in lockstep): where they don't divide evenly, the last
    ranks repeat the epoch's first micro-batches. Every rank draws the same order (same seed)."""

    def __init__(self, batches: Sampler[list[int]], rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return -(-len(self.batches) // self.world)

    def __iter__(self):
        batches = list(self.batches)
        mine = batches[self.rank :: self.world]
        yield from mine + batches[: len(self) - len(mine)]


def share_of(batches: Sampler[list[int]], rank: int, world: int) -> Sampler[list[int]]:
    return batches if world == 1 else RankShare(batches, rank, world)


class ResumableLoader(DataLoader):
    """The training loader, able to start an epoch part-way (``resume.py``). ``order`` is the
    generator that draws every epoch's order; ``epoch_start`` its state when this epoch began.
    ``resume`` makes the next epoch draw the interrupted one's order and skip the micro-batches
    already trained on (or, if that epoch had ended, start the one after it)."""

    def __init__(self, *args, order: torch.Generator, **kwargs):
        super().__init__(*args, **kwargs)
        self.order = order
        self.epoch_start: torch.Tensor | None = None
        self.skip = 0

    def resume(self, epoch_start: torch.Tensor, batches_done: int) -> None:
        self.order.set_state(epoch_start)
        self.skip = batches_done
        if batches_done >= len(self):  # that epoch was over: its draws happen, its batches are not needed
            next(super().__iter__())
            self.skip = 0

    def __iter__(self):
        self.epoch_start = self.order.get_state()
        skip, self.skip = self.skip, 0
        for index, batch in enumerate(super().__iter__()):
            if index >= skip:
                yield batch


# A pairwise task's second text (reward modelling: the other dialogue of the pair), tokenised
# beside the first under these names.
PAIR_INPUTS = ("input_ids_b", "attention_mask_b")


def _tokenize_batch(batch: dict, tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict:
    faults.reached("tokenise")
    tokens = dict(tokenizer(batch["text"], truncation=True, max_length=max_length))
    if "text_b" in batch:
        second = tokenizer(batch["text_b"], truncation=True, max_length=max_length)
        tokens.update(zip(PAIR_INPUTS, (second["input_ids"], second["attention_mask"]), strict=True))
    return tokens


def tokenize(splits: datasets.DatasetDict | datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int):
    """``splits`` (or one split) with ``input_ids`` and ``attention_mask`` in place of ``text``
    (and ``PAIR_INPUTS`` in place of ``text_b``). The map gets the tokenizer and nothing else: a
    closure over a datamodule would make ``datasets`` pickle it (and the Trainer and W&B logger
    it points to) to fingerprint every map."""
    columns = splits.column_names if isinstance(splits, datasets.Dataset) else next(iter(splits.values())).column_names
    return splits.map(
        _tokenize_batch,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length},
        batched=True,
        remove_columns=[c for c in ("text", "text_b") if c in columns],
    )


class WithCopies(torch.utils.data.Dataset):
    """``rows``, and row ``i`` again at index ``len(rows) + i`` marked ``real=False``."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self) -> int:
        return 2 * len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return {**self.rows[index % len(self.rows)], "real": index < len(self.rows)}


class TaskDataModule(pl.LightningDataModule):
    """Batches of ``input_ids``, ``attention_mask``, ``target`` (P(label=1)) and ``label`` (GT),
    from splits already tokenised by ``tokenize`` (once per tokenizer, for every stage).

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
        minibatch_size: int,
        eval_batch_size: int,
        targets: dict[str, np.ndarray] | None = None,
        seed: int = 0,
        length_buckets: int | None = None,
    ):
        super().__init__()
        self.seed = seed
        self.length_buckets = length_buckets
        self.splits = splits
        self.tokenizer = tokenizer
        self.train_split = train_split
        self.predict_splits = predict_splits
        self.minibatch_size = minibatch_size
        self.eval_batch_size = eval_batch_size
        self.targets = targets or {}
        self.prepared: dict[str, datasets.Dataset] = {}
        self.resume_order: dict | None = None  # set from a resumed checkpoint (resume.ResumePoint)

    def split_targets(self, name: str) -> np.ndarray:
        rows = self.splits[name]
        if name not in self.targets:
            return np.asarray(rows["label"], dtype=np.float32)
        targets = np.asarray(self.targets[name], dtype=np.float32)
        if len(targets) != len(rows):
            raise ValueError(f"{len(targets)} targets for {len(rows)} rows of {name}")
        return targets

    def used_splits(self) -> set[str]:
        """The training rows, what is predicted, and val unless it is empty (n_val=0)."""
        return {self.train_split, *self.predict_splits} | ({"val"} if len(self.splits["val"]) else set())

    def setup(self, stage: str | None = None) -> None:
        if self.prepared:
            return
        for name in self.used_splits():
            rows = self.splits[name].add_column("target", self.split_targets(name).tolist())
            inputs = ["input_ids", "attention_mask", *(c for c in PAIR_INPUTS if c in rows.column_names)]
            self.prepared[name] = rows.select_columns([*inputs, "target", "label"]).with_format("python")

    def pad(self, rows: list[dict], ids: str, mask: str) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad(
            [{"input_ids": r[ids], "attention_mask": r[mask]} for r in rows], return_tensors="pt"
        )
        return {ids: batch["input_ids"], mask: batch["attention_mask"]}

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.pad(rows, "input_ids", "attention_mask")
        if PAIR_INPUTS[0] in rows[0]:  # each text of a pair padded on its own
            batch.update(self.pad(rows, *PAIR_INPUTS))
        return {**batch, **self._labels(rows)}

    @staticmethod
    def _labels(rows: list[dict]) -> dict[str, torch.Tensor]:
        return {
            "target": torch.tensor([r["target"] for r in rows], dtype=torch.float32),
            "label": torch.tensor([r["label"] for r in rows], dtype=torch.long),
            "real": torch.tensor([r.get("real", True) for r in rows]),
        }

    def lengths(self, name: str) -> list[int]:
        """Tokens per row (both texts of a pair): what a row costs, for length buckets."""
        rows = self.prepared[name]
        lengths = [len(ids) for ids in rows["input_ids"]]
        if PAIR_INPUTS[0] in rows.column_names:
            lengths = [n + len(ids) for n, ids in zip(lengths, rows[PAIR_INPUTS[0]], strict=True)]
        return lengths

    def by_length(self, name: str) -> list[int]:
        """The rows of ``name``, longest first: evaluation batches with little padding (and the
        largest batch up front, so a batch too big for memory fails at once)."""
        lengths = self.lengths(name)
        return sorted(range(len(lengths)), key=lambda i: -lengths[i])

    def ranks(self) -> tuple[int, int]:
        """This process's rank and the number of ranks of the Trainer the datamodule serves."""
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def rows_of_rank(self, name: str, rank: int, world: int) -> list[int]:
        """The rows of ``name`` that ``rank`` predicts, in the order it predicts them: every
        ``world``-th row of ``by_length``. No row is repeated to even out the ranks."""
        return self.by_length(name)[rank::world]

    def in_row_order(self, name: str, shares: list[torch.Tensor]) -> torch.Tensor:
        """The predictions of ``name`` (one tensor per rank, in ``rows_of_rank`` order), back in
        the split's row order."""
        restored = shares[0].new_empty((sum(len(s) for s in shares), *shares[0].shape[1:]))
        for rank, values in enumerate(shares):
            restored[self.rows_of_rank(name, rank, len(shares))] = values
        return restored

    def _eval_loader(self, name: str) -> DataLoader:
        """This rank's rows of ``name``; where ranks have one fewer, a copy of a row marked
        ``real=False`` (left out of metrics; its prediction is cut off when they are gathered).
        Every rank then runs as many batches: FSDP's forward is a collective call."""
        rank, world = self.ranks()
        rows = self.rows_of_rank(name, rank, world)
        padding = [len(self.prepared[name]) + i for i in range(-(-len(self.prepared[name]) // world) - len(rows))]
        return DataLoader(
            WithCopies(self.prepared[name]),
            batch_size=self.eval_batch_size,
            sampler=rows + padding,
            collate_fn=self.collate,
        )

    def train_dataloader(self) -> DataLoader:
        # The training order has a generator of its own: validation and prediction loaders
        # draw from torch's global one, and must not change the order (nor the result).
        generator = torch.Generator().manual_seed(self.seed)
        rows = self.prepared[self.train_split]
        if self.length_buckets:
            batches = ShuffledBuckets(
                self.lengths(self.train_split), self.minibatch_size, self.length_buckets, generator
            )
            loader = ResumableLoader(
                rows, batch_sampler=share_of(batches, *self.ranks()), collate_fn=self.collate, order=generator
            )
        else:  # DataLoader(shuffle=True, generator=generator), spelt out so that ranks can share it
            batches = BatchSampler(RandomSampler(rows, generator=generator), self.minibatch_size, drop_last=False)
            loader = ResumableLoader(
                rows,
                batch_sampler=share_of(batches, *self.ranks()),
                collate_fn=self.collate,
                generator=generator,
                order=generator,
            )
        if self.resume_order:
            loader.resume(self.resume_order["epoch_start"], self.resume_order["batches_done"])
        return loader

    def val_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader("val")] if len(self.splits["val"]) else []

    def predict_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(name) for name in self.predict_splits]


class FeatureDataModule(TaskDataModule):
    """The same splits as cached backbone features (linear probes): batches of
    ``features``, ``target`` and ``label``; nothing is tokenised."""

    def __init__(self, splits: datasets.DatasetDict, features: dict[str, torch.Tensor], **kwargs):
        super().__init__(splits, tokenizer=None, **kwargs)
        self.features = features

    def setup(self, stage: str | None = None) -> None:
        if self.prepared:
            return
        for name in self.used_splits():
            labels, targets = self.splits[name]["label"], self.split_targets(name)
            self.prepared[name] = [
                {"features": f, "target": float(t), "label": int(y)}
                for f, t, y in zip(self.features[name], targets, labels, strict=True)
            ]

    def lengths(self, name: str) -> list[int]:
        return [1] * len(self.prepared[name])  # features have no length: row order is kept

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return {"features": torch.stack([r["features"] for r in rows]), **self._labels(rows)}
