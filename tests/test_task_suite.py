"""The paper's task suite: every registered task composes, every formatter makes balanced,
leak-free binary examples from real rows, cuts are deterministic, and reward modelling's
pair model is the Bradley-Terry model."""

from __future__ import annotations

import hashlib
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from w2s_lightning import formatters, generative, tasks
from w2s_lightning.errors import DataError
from w2s_lightning.losses import XentLoss
from w2s_lightning.models import Classifier, pair_logits

ROOT = Path(__file__).resolve().parents[1]
REGISTERED = sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml"))
# The paper's 22 NLP datasets (as EleutherAI's registry names them), by our task names.
PAPER_22 = [
    "boolq",
    "cosmos_qa",
    "dream",
    "ethics_justice",
    "ethics_deontology",
    "ethics_virtue",
    "ethics_utilitarianism",
    "anli_r2",
    "cola",
    "sst2",
    "hellaswag",
    "mc_taco",
    "openbookqa",
    "paws",
    "quail",
    "piqa",
    "quartz",
    "sciq",
    "social_i_qa",
    "multirc",
    "wic",
    "twitter_sentiment",
]
# Tasks with a folder in ../shared/data (tweet_eval_sentiment stands in for twitter_sentiment).
LOCAL = [
    "sciq",
    "boolq",
    "sst2",
    "dream",
    "ethics_deontology",
    "ethics_virtue",
    "ethics_utilitarianism",
    "cola",
    "multirc",
    "wic",
    "hellaswag",
    "quail",
    "piqa",
    "social_i_qa",
    "anli_r2",
    "tweet_eval_sentiment",
]
REWARD = ["hh_harmless", "hh_helpful", "hh"]
# Tasks with local data only (their columns are this repository's data's, not a hub dataset's).
OFFLINE_ONLY = {"chess": "chess_puzzles"}
SMALL = ["task.n_train=200", "task.n_val=20", "task.n_test=100"]


def test_every_paper_task_and_reward_task_is_registered_and_composes(make_cfg):
    assert set(PAPER_22 + LOCAL + REWARD) <= set(REGISTERED)
    for name in REGISTERED:
        task = make_cfg(f"task={name}").task
        assert task.name == name and task.formatter in formatters.FORMATTERS
        if task.image_dir:  # idx files (vision.py; test_vision.py), from `make install-vision`
            assert task.columns == ["image", "class"], name
        elif name != "custom" and name not in OFFLINE_ONLY:
            assert task.hub_path and task.columns, name  # runs with the hub, and its columns are checked
        assert (task.n_train, task.n_test) == (20000, 10000)  # the schema's paper sizes


@pytest.mark.parametrize("name", LOCAL + REWARD + list(OFFLINE_ONLY))
def test_local_tasks_make_balanced_binary_splits_from_real_rows(name, make_cfg, data_dir, caplog):
    caplog.set_level("INFO", logger="w2s_lightning")
    task = make_cfg(f"task={name}", *SMALL).task
    splits = tasks.load_splits(task, data_dir, seed=0)
    for split, rows in splits.items():
        assert set(rows["label"]) <= {0, 1} and rows.features["label"].dtype == "int64", split
        assert all(isinstance(t, str) and t for t in rows["text"]), split
    balance = tasks.class_balance(splits)
    # Coin flips, native labels and balanced tasks (a random sample of a 50/50 set) within sampling
    # noise of 100 rows; BoolQ keeps its 62% yes, MultiRC its 44%.
    for split in ("train_a", "test"):
        assert 0.3 <= balance[split]["positive_rate"] <= 0.7, (split, balance)
    if task.balance:  # ethics_virtue's 8.6% positive, cola's 70%, ... come out near 50%, and the log says so
        pool = [*splits["train_a"]["label"], *splits["train_b"]["label"], *splits["val"]["label"]]
        assert 0.4 <= sum(pool) / len(pool) <= 0.6
        assert any(f"{name}/train: " in r.getMessage() and "balanced to" in r.getMessage() for r in caplog.records)
    if name == "ethics_virtue":
        assert "ethics_virtue/train: 8.6% positive in 28245 rows, balanced to 4830 rows" in caplog.text
    assert set(splits["train_a"]["text"]).isdisjoint(splits["test"]["text"]) or name == "ethics_virtue"
    if task.pairwise:
        assert set(splits["test"].column_names) == {"text", "text_b", "label"}


SPLITS_DIGEST = """
import hashlib, json, sys
from hydra import compose, initialize_config_dir
import w2s_lightning.config
from w2s_lightning import tasks
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    task = compose(config_name="config", overrides=sys.argv[3:]).task
splits = tasks.load_splits(task, sys.argv[2], seed=1)
rows = {k: [list(v["text"]), list(v["label"])] for k, v in splits.items()}
print(hashlib.sha256(json.dumps(rows).encode()).hexdigest())
"""


def test_a_cut_source_gives_the_same_splits_in_another_process(make_cfg, data_dir):
    # tweet_eval_sentiment: one file cut in two, a class left out, the rest balanced.
    overrides = ["task=tweet_eval_sentiment", *SMALL]
    splits = tasks.load_splits(make_cfg(*overrides).task, data_dir, seed=1)
    here = hashlib.sha256(
        json.dumps({k: [list(v["text"]), list(v["label"])] for k, v in splits.items()}).encode()
    ).hexdigest()
    there = subprocess.run(
        [sys.executable, "-c", SPLITS_DIGEST, str(ROOT / "conf"), data_dir, *overrides],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    assert here == there


@pytest.mark.parametrize("name", ["anli_r2", "hh_helpful", "tweet_eval_sentiment", "piqa"])
def test_single_source_cuts_are_disjoint_and_ignore_the_seed(name, make_cfg, data_dir):
    task = make_cfg(f"task={name}", *SMALL).task
    splits = tasks.load_splits(task, data_dir, seed=1)
    train, test = tasks.load_sources(task, data_dir)
    # Rows, not one column: PIQA repeats goals with other solutions, TweetEval repeats a few texts.
    rows_of = lambda rows: {json.dumps(row, sort_keys=True) for row in rows}  # noqa: E731
    assert rows_of(train).isdisjoint(rows_of(test)) and len(train) + len(test) == len(rows_of(train) | rows_of(test))
    other_seed = tasks.load_splits(task, data_dir, seed=2)
    assert other_seed["test"]["text"] == splits["test"]["text"]  # the cut and the test set ignore the seed


# ---------------------------------------------------------------------------- leakage
# Nothing in a text may reveal its label but the content being judged. A formatter follows one
# of three conventions (formatters.py); each has its check.


def first_rows(data_dir: str, name: str, n: int = 25) -> list[dict]:
    folder = Path(data_dir) / name
    path = sorted(folder.glob("*.jsonl"))[0]
    with open(path) as f:
        return [json.loads(next(f)) for _ in range(n)]


# Rows in the hub's schema for the tasks with no local copy.
HUB_ROWS = {
    "ethics_justice": [{"scenario": "I deserve a raise because I worked hard.", "label": 1}],
    "mc_taco": [{"sentence": "He left.", "question": "How long was he gone?", "answer": "2 days", "label": 1}],
    "paws": [{"sentence1": "A is B.", "sentence2": "B is A.", "label": 1}],
    "twitter_sentiment": [{"text": "love it", "label": 1}],
    "amazon_polarity": [{"title": "Great", "content": "works well", "label": 1}],
    "openbookqa": [
        {
            "question_stem": "The sun is a",
            "answerKey": "B",
            "choices": {"text": ["planet", "star", "moon", "comet"], "label": ["A", "B", "C", "D"]},
        }
    ],
    "quartz": [
        {
            "para": "More heat, more melting.",
            "question": "Hotter ice melts",
            "answerKey": "A",
            "choices": {"text": ["faster", "slower"], "label": ["A", "B"]},
        }
    ],
    "cosmos_qa": [
        {"context": "c", "question": "q", "label": 1, "answer0": "a", "answer1": "b", "answer2": "d", "answer3": "e"}
    ],
}
NATIVE = {  # the label column, and a value of the other class
    "sst2": ("label", lambda v: 1 - v),
    "boolq": ("answer", lambda v: not v),
    "cola": ("label", lambda v: 1 - v),
    "wic": ("label", lambda v: 1 - v),
    "multirc": ("label", lambda v: 1 - v),
    "ethics_deontology": ("label", lambda v: 1 - v),
    "ethics_virtue": ("label", lambda v: 1 - v),
    "ethics_justice": ("label", lambda v: 1 - v),
    "mc_taco": ("label", lambda v: 1 - v),
    "paws": ("label", lambda v: 1 - v),
    "twitter_sentiment": ("label", lambda v: 1 - v),
    "amazon_polarity": ("label", lambda v: 1 - v),
    "anli_r2": ("label", lambda v: (v + 1) % 3),
    "tweet_eval_sentiment": ("label", lambda v: 2 - v),
}
ORDER = {
    "ethics_utilitarianism": ("baseline", "less_pleasant"),
    "hh_harmless": ("chosen", "rejected"),
    "anthropic_hh": ("chosen", "rejected"),
}


def strings_of(row: dict) -> list[str]:
    """Every string in a row, lists and dicts included: the candidate answers are among them."""
    found = []
    for value in row.values():
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, list):
            found += [v for v in value if isinstance(v, str)]
        elif isinstance(value, dict):
            found += [v for vs in value.values() if isinstance(vs, list) for v in vs if isinstance(v, str)]
    return found


def as_both_labels(fmt, row: dict, task) -> dict[int, tuple[int, dict]]:
    """label -> (a seed that draws it, the example)."""
    examples = {}
    for seed in range(64):
        example = fmt(row, random.Random(seed), task)
        examples.setdefault(example["label"], (seed, example))
    return examples


def differing_middles(a: str, b: str) -> tuple[str, str]:
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and a[-1 - end] == b[-1 - end]:
        end += 1
    return a[start : len(a) - end], b[start : len(b) - end]


LEAKAGE_TASKS = sorted(set(LOCAL + REWARD + list(HUB_ROWS) + list(OFFLINE_ONLY) + ["anthropic_hh"]))


@pytest.mark.parametrize("name", LEAKAGE_TASKS)
def test_no_formatter_leaks_its_label(name, make_cfg, data_dir):
    task = make_cfg(f"task={name}").task
    fmt = formatters.FORMATTERS[task.formatter]
    folder = (
        "anthropic_hh"
        if name in ("hh_harmless", "hh", "anthropic_hh")
        else "anthropic_hh_helpful"
        if name == "hh_helpful"
        else OFFLINE_ONLY.get(name, name)
    )
    rows = HUB_ROWS.get(name) or first_rows(data_dir, folder)
    for row in rows:
        if name in NATIVE:  # the text never depends on the label
            column, other = NATIVE[name]
            flipped = fmt({**row, column: other(row[column])}, random.Random(0), task)
            original = fmt(row, random.Random(0), task)
            assert flipped["text"] == original["text"] and flipped.get("text_b") == original.get("text_b")
            continue
        examples = as_both_labels(fmt, row, task)
        if name == "cosmos_qa" and set(examples) == {0}:
            continue  # "None of the above" rows are always shown wrong
        assert set(examples) == {0, 1}, name
        shown = {label: e["text"] + "\x00" + e.get("text_b", "") for label, (_, e) in examples.items()}
        if task.pairwise or name in ORDER:
            # Only the order differs: label 1's draw on the row with its pair swapped is label 0's text.
            better, worse = ORDER.get(name, ("chosen", "rejected"))
            swapped = fmt({**row, better: row[worse], worse: row[better]}, random.Random(examples[1][0]), task)
            assert swapped["text"] + "\x00" + swapped.get("text_b", "") == shown[0], name
        else:  # only the candidate answer differs, and each version shows one of the row's own answers
            middles = differing_middles(shown[0], shown[1])
            candidates = strings_of(row)
            assert all(any(m in c for c in candidates) for m in middles), (name, middles)


# ---------------------------------------------------------------------------- reward modelling


def test_pair_logits_give_the_bradley_terry_loss_by_hand():
    r_chosen, r_rejected = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([0.5, 1.0, 0.0])
    # Pairs shown chosen-first (label 1): -log sigmoid(r_c - r_r), by hand.
    by_hand = (
        sum(math.log(1 + math.exp(-(c - r))) for c, r in zip(r_chosen.tolist(), r_rejected.tolist(), strict=True)) / 3
    )
    loss = XentLoss()(pair_logits(r_chosen, r_rejected), torch.ones(3), 0.0)
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    # The same pairs shown rejected-first (label 0) cost the same.
    assert XentLoss()(pair_logits(r_rejected, r_chosen), torch.zeros(3), 0.0).item() == pytest.approx(by_hand, rel=1e-6)
    # A soft label y: -(y log s(d) + (1 - y) log s(-d)), d = 2.0 - 0.5.
    soft = XentLoss()(pair_logits(r_chosen[:1], r_rejected[:1]), torch.tensor([0.8]), 0.0).item()
    d = 1.5
    assert soft == pytest.approx(-(0.8 * math.log(1 / (1 + math.exp(-d))) + 0.2 * math.log(1 / (1 + math.exp(d)))))


def test_a_reward_model_scores_each_text_alone():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    model = Classifier(BertModel(config), "mean", pairwise=True).eval()
    torch.nn.init.normal_(model.head.weight)
    assert model.head.out_features == 1
    a, b, c = (torch.randint(1, 50, (1, 6)) for _ in range(3))
    mask = torch.ones(1, 6, dtype=torch.long)
    with torch.no_grad():
        ab, ba, ac = model(a, mask, b, mask), model(b, mask, a, mask), model(a, mask, c, mask)
    p_ab, p_ba = ab.softmax(-1)[0, 1], ba.softmax(-1)[0, 1]
    assert (p_ab + p_ba).item() == pytest.approx(1.0, abs=1e-6)  # P(a > b) + P(b > a) = 1
    assert ab[0, 1] == ac[0, 1]  # a's reward does not depend on what it is paired with
    assert torch.sigmoid(ab[0, 1] - ab[0, 0]) == pytest.approx(p_ab.item(), abs=1e-6)


# ---------------------------------------------------------------------------- bad input


def test_a_file_without_the_columns_its_task_reads_is_named(make_cfg, data_dir, tmp_path):
    folder = tmp_path / "dream"
    folder.mkdir()
    for split in ("train", "test"):
        rows = [{k: v for k, v in row.items() if k != "choice"} for row in first_rows(data_dir, "dream", 30)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as err:
        tasks.load_splits(make_cfg("task=dream", *SMALL).task, str(tmp_path), seed=0)
    message = str(err.value)
    assert "lacks the column(s) ['choice']" in message and "'dialogue', 'question', 'choice', 'answer'" in message
    assert "the rows have ['id', 'dialogue_id', 'dialogue', 'question', 'answer']" in message and "\n" not in message


def test_string_labels_come_back_as_integers(make_cfg, data_dir, tmp_path):
    # HellaSwag stores its label as a string; so does a custom file of positive/negative.
    splits = tasks.load_splits(make_cfg("task=hellaswag", *SMALL).task, data_dir, seed=0)
    assert splits["test"].features["label"].dtype == "int64"
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n" + "".join(f"film {i},{'positive' if i % 2 else 'negative'}\n" for i in range(60)))
    task = make_cfg("task=custom", f"task.path={path}", "task.n_train=30", "task.n_val=0", "task.n_test=20").task
    custom = tasks.load_splits(task, None, seed=0)
    assert tasks.class_balance(custom)["test"]["positive_rate"] == sum(custom["test"]["label"]) / 20
    assert all(
        label == int(text.split()[1]) % 2
        for text, label in zip(custom["test"]["text"], custom["test"]["label"], strict=True)
    )


def test_generative_fine_tuning_reads_both_dialogues_of_a_pair(make_cfg, data_dir):
    splits = tasks.load_splits(make_cfg("task=hh_harmless", *SMALL).task, data_dir, seed=0)
    texts = generative.unlabeled_texts(splits)["text"]
    pool = [
        *splits["train_a"]["text"],
        *splits["train_a"]["text_b"],
        *splits["train_b"]["text"],
        *splits["train_b"]["text_b"],
    ]
    assert sorted(texts) == sorted(pool) and len(texts) == 4 * len(splits["train_a"])


def test_the_layer_screen_admits_a_task_only_when_the_weak_model_knows_it_and_the_gap_clears_the_noise():
    sys.path.insert(0, str(ROOT / "scripts"))
    from choose_layer import verdict

    def screened(model: str, acc: float, majority: float = 0.5) -> dict:
        return {"task": "t", "model": model, "rows": {"val": 200}, "best_val_acc": acc, "val_majority": majority}

    # Two standard errors of a coin flip on 200 rows: 7.1 points; the gap's noise at 75% / 90%: 7.4.
    assert verdict(screened("weak", 0.75), screened("strong", 0.90)).endswith(": measurable")
    assert verdict(screened("weak", 0.56), screened("strong", 0.90)).endswith("not measurable")  # near chance
    assert verdict(screened("weak", 0.75, majority=0.70), screened("strong", 0.90)).endswith("not measurable")
    assert verdict(screened("weak", 0.75), screened("strong", 0.81)).endswith("not measurable")  # gap in the noise
