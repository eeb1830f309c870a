"""Batching: length buckets that keep the order random, optimizer steps that ranks share as
one device takes them, and predictions back in row order."""

from types import SimpleNamespace

import datasets
import torch

from w2s_lightning.data import OptimizerSteps, TaskDataModule, by_tokens, length_bucketed, shuffled, tokenize


def padded(batches, lengths) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_length_buckets_cover_every_row_once_with_less_padding():
    lengths = torch.randint(1, 80, (203,), generator=torch.Generator().manual_seed(0)).tolist()
    draw = length_bucketed(lengths, minibatch_size=16, buckets=4)
    first, again = draw(torch.Generator().manual_seed(0)), draw(torch.Generator().manual_seed(0))
    assert len(first) == 13  # 3 buckets of 64 rows in 4 batches, 11 rows left in one
    assert sorted(i for batch in first for i in batch) == list(range(203))
    assert all(len(batch) <= 16 for batch in first)
    assert again == first and draw(torch.Generator().manual_seed(1)) != first  # the generator decides
    plain = torch.randperm(203, generator=torch.Generator().manual_seed(0)).split(16)
    assert padded(first, lengths) < 0.8 * padded([b.tolist() for b in plain], lengths)


class Lengths(TaskDataModule):
    """A datamodule whose rows have the given token lengths (nothing to tokenise)."""

    def __init__(self, lengths, **settings):
        super().__init__(
            splits=None,
            tokenizer=None,
            train_split="test",
            predict_splits=["test"],
            minibatch_size=2,
            eval_batch_size=2,
            **settings,
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


def test_ranks_share_each_optimizer_step_as_one_device_takes_it_and_train_every_row_once():
    # 7 micro-batches of 2 rows (the last of 1), steps of 4 micro-batches: the second step has 3,
    # which do not divide between two ranks.
    one = OptimizerSteps(shuffled(13, 2), per_step=4, seed=0)
    shares = [OptimizerSteps(shuffled(13, 2), per_step=4, seed=0, rank=r, world=2) for r in (0, 1)]
    steps, by_rank = list(one), [list(s) for s in shares]
    assert len(one) == len(shares[0]) == len(steps) == 2
    for k, step in enumerate(steps):
        ranks = [by_rank[r][k] for r in (0, 1)]
        assert all(s["rows"] == step["rows"] for s in ranks)
        assert len(ranks[0]["micro_batches"]) == len(ranks[1]["micro_batches"])  # lockstep
        real = [b for s in ranks for b in s["micro_batches"][: len(s["micro_batches"]) - s["stand_ins"]]]
        assert sorted(real) == sorted(step["micro_batches"])  # the ranks' micro-batches are the device's
    assert [s[1]["stand_ins"] for s in by_rank] == [0, 1]  # a stand-in where the last step does not divide
    rows = [i for s in by_rank for step in s for b in step["micro_batches"][: 2 - step["stand_ins"]] for i in b]
    assert sorted(rows) == list(range(13))  # every row once in the epoch: none repeated


def test_a_token_budget_cuts_the_same_steps_into_micro_batches_of_similar_length():
    lengths = torch.randint(1, 80, (203,), generator=torch.Generator().manual_seed(0)).tolist()
    batches = by_tokens(list(range(203)), lengths, budget=256)
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert all(len(b) * max(lengths[i] for i in b) <= 256 or len(b) == 1 for b in batches)
    assert len(batches[-1]) > len(batches[0])  # short rows share a batch, long ones do not
    assert by_tokens([5], lengths, budget=1) == [[5]]  # a row longer than the budget still runs

    # Steps of 4 micro-batches of 8 rows: the same 32 rows a step with and without the budget,
    # only cut differently; each micro-batch weighs its rows' share of the step.
    def steps(**recut):
        return list(OptimizerSteps(length_bucketed(lengths, 8, 4), per_step=4, seed=0, **recut))

    by_rows, budgeted = steps(), steps(recut=lambda rows: by_tokens(rows, lengths, 256))
    assert [sorted(sum(s["micro_batches"], [])) for s in budgeted] == [
        sorted(sum(s["micro_batches"], [])) for s in by_rows
    ]
    assert {len(s["micro_batches"]) for s in budgeted} != {4}
    assert padded([b for s in budgeted for b in s["micro_batches"]], lengths) <= 256 * sum(
        len(s["micro_batches"]) for s in budgeted
    )


def test_prediction_batches_by_tokens_cover_every_row_once_in_as_many_batches_on_every_rank():
    lengths = [3, 9, 1, 5, 7, 2, 2, 8, 1]
    for world in (1, 2):
        loaders = []
        for rank in range(world):
            datamodule = Lengths(lengths, eval_batch_tokens=12)
            datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=world)
            loaders.append(list(datamodule.predict_dataloader()[0].batch_sampler))
        assert len({len(batches) for batches in loaders}) == 1  # lockstep: one batch count
        rows = [i for batches in loaders for b in batches for i in b if i < len(lengths)]
        assert sorted(rows) == list(range(len(lengths)))
        for batches in loaders:
            assert all(len(b) * max(lengths[i % len(lengths)] for i in b) <= 12 or len(b) == 1 for b in batches)
        if world == 1:  # lengths 9, 8, 7 alone; 5 and 3; 2, 2, 1 and 1 in one batch
            assert [len(b) for b in loaders[0]] == [1, 1, 1, 2, 4]


def test_each_epochs_order_depends_on_the_seed_and_the_epoch_alone():
    # Rows that divide into micro-batches and rows that do not: a fit resumed at any step of any
    # epoch, the end of one included, draws what an uninterrupted fit draws.
    for rows in (16, 13):
        uninterrupted = OptimizerSteps(shuffled(rows, 2), per_step=2, seed=3)
        epochs = []
        for epoch in (0, 1):
            uninterrupted.set_epoch(epoch)
            epochs.append(list(uninterrupted))
        assert epochs[0] != epochs[1]
        for epoch, done in ((0, 2), (0, len(uninterrupted)), (1, 1)):
            resumed = OptimizerSteps(shuffled(rows, 2), per_step=2, seed=3)
            resumed.resume(epoch, done)
            resumed.set_epoch(epoch)
            assert list(resumed) == epochs[epoch][done:]
            if epoch == 0:  # the epoch after goes on from the whole order, whatever was skipped
                resumed.set_epoch(1)
                assert list(resumed) == epochs[1]
        other_seed = OptimizerSteps(shuffled(rows, 2), per_step=2, seed=4)
        assert list(other_seed) != epochs[0]


def test_a_tokenised_split_is_fingerprinted_by_what_decides_its_tokens(tiny_bert):
    """The map's fingerprint (under which ``datasets`` caches its output) comes from the
    tokenizer's definition and settings, not from pickling it: equal for an equal tokenizer,
    different when the tokens would differ."""
    from transformers import AutoTokenizer

    rows = datasets.Dataset.from_dict({"text": ["a short one", "a somewhat longer text to cut"], "label": [0, 1]})
    first, again = AutoTokenizer.from_pretrained(tiny_bert), AutoTokenizer.from_pretrained(tiny_bert)
    left = AutoTokenizer.from_pretrained(tiny_bert, truncation_side="left")
    tokenised = tokenize(rows, first, 4)
    assert tokenised._fingerprint == tokenize(rows, again, 4)._fingerprint
    assert tokenised["input_ids"] == tokenize(rows, again, 4)["input_ids"]
    assert tokenize(rows, left, 4)._fingerprint != tokenised._fingerprint  # another side is cut
    assert tokenize(rows, left, 4)["input_ids"][1] != tokenised["input_ids"][1]
    assert tokenize(rows, first, 5)._fingerprint != tokenised._fingerprint
