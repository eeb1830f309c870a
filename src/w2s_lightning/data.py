"""One LightningDataModule for every task: its splits, tokenised for one model, with the
targets one stage trains and selects on (ground truth, or a supervisor's soft labels).

Why it is long: the training order (length buckets, each rank's share of an optimizer step,
resuming part-way) is a few small functions and classes that only make sense beside the
DataModule.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import datasets
import lightning.pytorch as pl
import numpy as np
import torch
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader, Sampler
from transformers import PreTrainedTokenizerBase

from w2s_lightning import faults

# One epoch's micro-batches (lists of row indices), drawn from a generator.
EpochDraw = Callable[[torch.Generator], list[list[int]]]


def shuffled(rows: int, minibatch_size: int) -> EpochDraw:
    """Micro-batches of rows in a random order."""

    def draw(generator: torch.Generator) -> list[list[int]]:
        return [b.tolist() for b in torch.randperm(rows, generator=generator).split(minibatch_size)]

    return draw


def length_bucketed(lengths: list[int], minibatch_size: int, buckets: int) -> EpochDraw:
    """Micro-batches of rows of similar length, in a random order: little padding, and the
    randomness a sweep over seeds needs. The rows are shuffled, cut into buckets of ``buckets``
    micro-batches, each bucket sorted by length and cut into micro-batches, and those shuffled."""

    def draw(generator: torch.Generator) -> list[list[int]]:
        order = torch.randperm(len(lengths), generator=generator).tolist()
        size = minibatch_size * buckets
        batches = []
        for start in range(0, len(order), size):
            bucket = sorted(order[start : start + size], key=lengths.__getitem__)
            batches += [bucket[i : i + minibatch_size] for i in range(0, len(bucket), minibatch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    return draw


def by_tokens(rows: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """``rows`` cut into batches of similar length, longest first, each as many rows as fit
    ``budget`` padded tokens (rows x its longest row; always at least one row): short rows
    share a batch that long rows would overflow."""
    order = sorted(rows, key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's order: a function of the seed and the epoch alone, so that
    a resumed fit draws the order an uninterrupted one would, wherever it stopped."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class OptimizerSteps(Sampler[dict]):
    """One rank's share of each optimizer step of an epoch. A single device cuts the epoch's
    micro-batches into steps of ``per_step``; of each step, rank ``r`` of ``world`` takes every
    ``world``-th micro-batch from the ``r``-th on. Where a step's micro-batches do not divide
    among the ranks (the epoch's last step), a rank that has one fewer gets a stand-in, a copy
    of the step's first micro-batch that runs and weighs nothing (the ranks of DDP and FSDP run
    in lockstep), so every row trains once per epoch, as on one device. Each step: this rank's
    ``micro_batches``, the last ``stand_ins`` of them stand-ins, and ``rows``, the step's rows
    on all ranks.

    The order is drawn per epoch from ``epoch_generator`` (Lightning calls ``set_epoch``);
    ``resume`` skips the steps an interrupted fit had done in that epoch. ``recut``, where
    given, cuts each step's rows into micro-batches anew (``by_tokens``): the steps, and so
    every update, stay the same."""

    def __init__(
        self,
        draw: EpochDraw,
        per_step: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        recut: Callable[[list[int]], list[list[int]]] | None = None,
    ):
        self.draw, self.per_step, self.seed, self.rank, self.world = draw, per_step, seed, rank, world
        self.recut = recut
        self.micro_batches = len(draw(torch.Generator()))
        self.epoch = 0
        self.resume_at: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, steps_done: int) -> None:
        self.resume_at = (epoch, steps_done)

    def __len__(self) -> int:
        return -(-self.micro_batches // self.per_step)

    def __iter__(self):
        batches = self.draw(epoch_generator(self.seed, self.epoch))
        done = self.resume_at[1] if self.resume_at and self.resume_at[0] == self.epoch else 0
        self.resume_at = None
        for start in range(done * self.per_step, len(batches), self.per_step):
            step = batches[start : start + self.per_step]
            if self.recut:
                step = self.recut([i for batch in step for i in batch])
            mine = step[self.rank :: self.world]
            stand_ins = -(-len(step) // self.world) - len(mine)
            yield {"micro_batches": mine + step[:1] * stand_ins, "stand_ins": stand_ins, "rows": sum(map(len, step))}


class StepRows(torch.utils.data.Dataset):
    """A step of ``OptimizerSteps`` as collated micro-batches, each with its ``share`` of the
    step's loss: its rows over the step's rows (0 for a stand-in)."""

    def __init__(self, rows, collate: Callable[[list], dict]):
        self.rows, self.collate = rows, collate

    def __getitem__(self, step: dict) -> dict:
        batches, real = step["micro_batches"], len(step["micro_batches"]) - step["stand_ins"]
        return {
            "micro_batches": [self.collate([self.rows[i] for i in b]) for b in batches],
            "shares": [len(b) / step["rows"] if k < real else 0.0 for k, b in enumerate(batches)],
            "rows": step["rows"],
        }


def step_loader(rows, collate: Callable[[list], dict], sampler: OptimizerSteps) -> DataLoader:
    """The training loader: one item per optimizer step (``StepRows``). It has a generator of
    its own: a loader without one seeds itself from torch's global generator, which dropout
    draws from."""
    return DataLoader(
        StepRows(rows, collate), sampler=sampler, batch_size=None, collate_fn=_as_is, generator=torch.Generator()
    )


def _as_is(step: dict) -> dict:
    return step


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
    if isinstance(splits, datasets.DatasetDict):
        identity = tokenizer_identity(tokenizer)
        return datasets.DatasetDict(
            {name: _tokenize_split(split, tokenizer, max_length, identity) for name, split in splits.items()}
        )
    return _tokenize_split(splits, tokenizer, max_length, tokenizer_identity(tokenizer))


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """What decides a tokenizer's output, hashed: a fast tokenizer's whole definition (vocabulary,
    normaliser, pre- and post-processing) and its Python-side settings (``repr`` lists the
    truncation and padding sides and the special tokens). ``datasets`` would otherwise dill the
    tokenizer to fingerprint each split's map: 0.1-1.1 s a split (a Qwen vocabulary is 4.6 MB),
    against 3-80 ms for this. None for a slow tokenizer: ``datasets`` hashes it then."""
    if not tokenizer.is_fast:
        return None
    return Hasher.hash((tokenizer.backend_tokenizer.to_str(), repr(tokenizer), Hasher.hash(_tokenize_batch)))


def _tokenize_split(split: datasets.Dataset, tokenizer, max_length: int, identity: str | None) -> datasets.Dataset:
    return split.map(
        _tokenize_batch,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length},
        batched=True,
        remove_columns=[c for c in ("text", "text_b") if c in split.column_names],
        new_fingerprint=None if identity is None else Hasher.hash((split._fingerprint, identity, max_length)),
    )


class WithCopies(torch.utils.data.Dataset):
    """``rows``, and row ``i`` again at index ``len(rows) + i`` marked ``real=False``."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self) -> int:
        return 2 * len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return {**self.rows[index % len(self.rows)], "real": index < len(self.rows)}


class Batches(Sampler[list[int]]):
    """Batches fixed in advance, as a batch sampler (Lightning wraps one to record its indices)."""

    def __init__(self, batches: list[list[int]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class TaskDataModule(pl.LightningDataModule):
    """Batches of ``input_ids``, ``attention_mask``, ``target`` (P(label=1)) and ``label`` (GT),
    from splits already tokenised by ``tokenize`` (once per tokenizer, for every stage).

    ``targets`` maps a split name to the soft labels it is trained or validated on (the
    train split and ``val`` under a weak supervisor); splits not in it use their ground
    truth. ``predict_dataloader`` yields one loader per name in ``predict_splits``. Training
    takes optimizer steps of ``per_step`` micro-batches of ``minibatch_size`` rows (on one
    device; ranks share them, ``OptimizerSteps``). With ``minibatch_tokens`` each step's rows
    are cut by padded tokens instead (``by_tokens``), and with ``eval_batch_tokens`` the
    prediction batches too.
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
        per_step: int = 1,
        length_buckets: int | None = None,
        minibatch_tokens: int | None = None,
        eval_batch_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
    ):
        super().__init__()
        self.seed = seed
        self.length_buckets = length_buckets
        self.minibatch_tokens, self.eval_batch_tokens = minibatch_tokens, eval_batch_tokens
        self.pad_to_multiple_of = pad_to_multiple_of
        self.splits = splits
        self.tokenizer = tokenizer
        self.train_split = train_split
        self.predict_splits = predict_splits
        self.minibatch_size = minibatch_size
        self.per_step = per_step
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

    def pad(self, rows: list[dict], ids: str, mask: str, multiple: int | None) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad(
            [{"input_ids": r[ids], "attention_mask": r[mask]} for r in rows],
            pad_to_multiple_of=multiple,
            return_tensors="pt",
        )
        return {ids: batch["input_ids"], mask: batch["attention_mask"]}

    def collate(self, rows: list[dict], pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
        batch = self.pad(rows, "input_ids", "attention_mask", pad_to_multiple_of)
        if PAIR_INPUTS[0] in rows[0]:  # each text of a pair padded on its own
            batch.update(self.pad(rows, *PAIR_INPUTS, pad_to_multiple_of))
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
        order = rows + padding
        if not self.eval_batch_tokens:
            return DataLoader(
                WithCopies(self.prepared[name]), batch_size=self.eval_batch_size, sampler=order, collate_fn=self.collate
            )
        # Batch sizes cut on rank 0's rows (each the longest of its group of ``world``), the same
        # on every rank: as many batches everywhere, none over the budget.
        lengths = self.lengths(name)
        first = [lengths[i] for i in self.rows_of_rank(name, 0, world)]  # longest first
        starts = np.cumsum([0, *map(len, by_tokens(list(range(len(first))), first, self.eval_batch_tokens))]).tolist()
        batches = Batches([order[a:b] for a, b in zip(starts, starts[1:], strict=False)])
        return DataLoader(WithCopies(self.prepared[name]), batch_sampler=batches, collate_fn=self.collate)

    def train_dataloader(self) -> DataLoader:
        rows = self.prepared[self.train_split]
        if self.length_buckets:
            draw = length_bucketed(self.lengths(self.train_split), self.minibatch_size, self.length_buckets)
        else:
            draw = shuffled(len(rows), self.minibatch_size)
        recut = None
        if self.minibatch_tokens:
            recut = functools.partial(by_tokens, lengths=self.lengths(self.train_split), budget=self.minibatch_tokens)
        steps = OptimizerSteps(draw, self.per_step, self.seed, *self.ranks(), recut=recut)
        # Training only: a backward pass compiles several kernels per shape; a prediction, one.
        collate = functools.partial(self.collate, pad_to_multiple_of=self.pad_to_multiple_of)
        return step_loader(rows, collate, steps)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader("val")] if len(self.splits["val"]) else []

    def predict_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(name) for name in self.predict_splits]


class ImageDataModule(TaskDataModule):
    """The same splits as images (vision.py): batches of uint8 ``image``, ``target`` and
    ``label``. The model scales and resizes the pixels itself, so nothing is tokenised."""

    def __init__(self, splits: datasets.DatasetDict, **kwargs):
        super().__init__(splits, tokenizer=None, **kwargs)

    def setup(self, stage: str | None = None) -> None:
        if self.prepared:
            return
        for name in self.used_splits():
            rows = self.splits[name].add_column("target", self.split_targets(name).tolist())
            self.prepared[name] = rows.select_columns(["image", "target", "label"]).with_format("numpy")

    def lengths(self, name: str) -> list[int]:
        return [1] * len(self.prepared[name])  # images of one size: nothing to bucket

    def collate(self, rows: list[dict], pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
        # Images of one size: nothing to pad. datasets hands Array2D rows to numpy as int64;
        # they are stored (and sent) as uint8
        images = np.stack([r["image"] for r in rows]).astype(np.uint8)
        return {"image": torch.from_numpy(images), **self._labels(rows)}


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

    def collate(self, rows: list[dict], pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
        # Features of one size: nothing to pad
        return {"features": torch.stack([r["features"] for r in rows]), **self._labels(rows)}
