"""Batching: length buckets that keep the order random, and predictions back in row order."""

from types import SimpleNamespace

import datasets
import torch

from w2s_lightning.data import RankShare, ShuffledBuckets, TaskDataModule, share_of


def padded(batches, lengths) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_shuffled_buckets_cover_every_row_once_with_less_padding():
    lengths = torch.randint(1, 80, (203,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = ShuffledBuckets(lengths, minibatch_size=16, buckets=4, generator=torch.Generator().manual_seed(0))
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == 13  # 3 buckets of 64 rows in 4 batches, 11 rows left in one
    for epoch in (first, second):
        assert sorted(i for batch in epoch for i in batch) == list(range(203))
        assert all(len(batch) <= 16 for batch in epoch)
    assert first != second  # a new order every epoch
    plain = torch.randperm(203, generator=torch.Generator().manual_seed(0)).split(16)
    assert padded(first, lengths) < 0.8 * padded([b.tolist() for b in plain], lengths)
    other_seed = list(ShuffledBuckets(lengths, 16, 4, torch.Generator().manual_seed(1)))
    assert other_seed != first


class Lengths(TaskDataModule):
    """A datamodule whose rows have the given token lengths (nothing to tokenise)."""

    def __init__(self, lengths):
        super().__init__(
            splits=None,
            tokenizer=None,
            train_split="test",
            predict_splits=["test"],
            minibatch_size=2,
            eval_batch_size=2,
        )
        self.prepared = {"test": datasets.Dataset.from_dict({"input_ids": [[0] * n for n in lengths]})}


def test_predictions_come_back_in_row_order():
    datamodule = Lengths([3, 9, 1, 5])
    assert datamodule.by_length("test") == [1, 3, 0, 2]  # longest first
    # The loader's predictions for rows 1, 3, 0, 2 (each row's prediction is its own index here).
    predicted = torch.tensor([1.0, 3.0, 0.0, 2.0])
    assert datamodule.in_row_order("test", [predicted]).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_ranks_predict_disjoint_rows_that_come_back_in_row_order():
    datamodule = Lengths([3, 9, 1, 5, 7])
    shares = [datamodule.rows_of_rank("test", rank, 2) for rank in (0, 1)]
    assert shares == [[1, 3, 2], [4, 0]]  # by_length is [1, 4, 3, 0, 2]: no row twice, none left out
    gathered = [torch.tensor(rows, dtype=torch.float) for rows in shares]
    assert datamodule.in_row_order("test", gathered).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    # Rank 1 predicts as many rows as rank 0: its two, then a copy marked as one (index 5 = row 0).
    datamodule.trainer = SimpleNamespace(global_rank=1, world_size=2)
    loader = datamodule.predict_dataloader()[0]
    assert list(loader.sampler) == [4, 0, 5]
    copy = loader.dataset[5]
    assert copy["real"] is False and copy["input_ids"] == datamodule.prepared["test"][0]["input_ids"]


def test_ranks_share_micro_batches_as_one_device_accumulates_them():
    batches = [[i] for i in range(7)]  # seven micro-batches of one epoch
    shares = [list(RankShare(batches, rank, 2)) for rank in (0, 1)]
    assert shares == [[[0], [2], [4], [6]], [[1], [3], [5], [0]]]  # as many each; rank 1 repeats the first
    # Two ranks accumulating 2 micro-batches each see, per step, the 4 a single device accumulates.
    steps = [sorted(shares[0][2 * k : 2 * k + 2] + shares[1][2 * k : 2 * k + 2]) for k in range(2)]
    assert steps == [[[0], [1], [2], [3]], [[0], [4], [5], [6]]]
    assert share_of(batches, 0, 1) is batches  # one device: the sampler itself, unchanged
