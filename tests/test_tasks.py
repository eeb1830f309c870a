import json
import random
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException

from w2s_lightning import formatters, tasks
from w2s_lightning.errors import DataError


def first_row(data_dir: str, task: str, split: str) -> dict:
    with open(Path(data_dir, task, f"{split}.jsonl")) as f:
        return json.loads(f.readline())


def test_sciq_formatter_on_a_known_row(data_dir, make_cfg):
    row = first_row(data_dir, "sciq", "test")
    assert row["correct_answer"] == "oxidants"
    task = make_cfg("task=sciq").task
    seen = set()
    for seed in range(20):
        example = formatters.format_sciq(row, random.Random(seed), task)
        prefix = f"Q: {row['question']} A: "
        assert example["text"].startswith(prefix)
        answer = example["text"][len(prefix) :]
        if example["label"] == 1:
            assert answer == "oxidants"
        else:
            assert answer in {row["distractor1"], row["distractor2"], row["distractor3"]}
        seen.add(example["label"])
    assert seen == {0, 1}


def test_sst2_and_boolq_formatters_on_known_rows(data_dir, make_cfg):
    sst2 = formatters.FORMATTERS["sst2"](
        first_row(data_dir, "sst2", "test"), random.Random(0), make_cfg("task=sst2").task
    )
    assert sst2 == {"text": "no movement , no yuks , not much of anything .", "label": 0}
    row = first_row(data_dir, "boolq", "validation")
    boolq = formatters.format_boolq(row, random.Random(0), make_cfg("task=boolq").task)
    assert boolq["label"] == 0  # "does ethanol take more energy make that produces": false
    assert boolq["text"] == f"Passage: {row['passage']}\nQuestion: {row['question']}"


def test_cosmos_qa_none_of_the_above_is_always_wrong(make_cfg):
    task = make_cfg("task=cosmos_qa").task
    row = {
        "context": "c",
        "question": "q",
        "label": 3,
        "answer0": "a",
        "answer1": "b",
        "answer2": "d",
        "answer3": "None of the above choices .",
    }
    for seed in range(10):
        example = formatters.format_cosmos_qa(row, random.Random(seed), task)
        assert example["label"] == 0 and "None of the above" not in example["text"]


def test_anthropic_hh_is_pairwise_in_random_order(make_cfg):
    task = make_cfg("task=anthropic_hh").task
    row = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello, how can I help?",
        "rejected": "\n\nHuman: hi\n\nAssistant: go away",
    }
    labels = set()
    for seed in range(10):
        example = formatters.format_anthropic_hh(row, random.Random(seed), task)
        a = example["text"].split("Response A: ")[1].split("\n\nResponse B:")[0]
        assert example["text"].startswith("Human: hi")
        assert (a == "hello, how can I help?") == bool(example["label"])
        labels.add(example["label"])
    assert labels == {0, 1}


def test_splits_sizes_determinism_and_fixed_test(make_cfg, data_dir):
    task = make_cfg("task=sciq", "task.n_train=200", "task.n_val=20", "task.n_test=100").task
    a = tasks.load_splits(task, data_dir, seed=0)
    assert {k: len(v) for k, v in a.items()} == {"train_a": 100, "train_b": 100, "val": 20, "test": 100}
    again = tasks.load_splits(task, data_dir, seed=0)
    assert a["train_a"]["text"] == again["train_a"]["text"]
    other_seed = tasks.load_splits(task, data_dir, seed=1)
    assert a["train_a"]["text"] != other_seed["train_a"]["text"]
    assert a["test"]["text"] == other_seed["test"]["text"]  # one test set for every seed
    pool = set(a["train_a"]["text"]) | set(a["train_b"]["text"])
    assert len(pool) == 200 and not pool & set(a["val"]["text"])
    balance = tasks.class_balance(a)
    assert 0.3 < balance["train_a"]["positive_rate"] < 0.7


def test_a_larger_validation_split_keeps_the_halves(make_cfg, data_dir):
    """Validation is drawn after the halves: asking for more (here more than a fifth of the
    pool) adds rows to it and leaves halves A and B as they were, so their stages are shared."""
    small, large = (
        tasks.load_splits(
            make_cfg("task=sciq", "task.n_train=200", f"task.n_val={n}", "task.n_test=50").task, data_dir, 0
        )
        for n in (20, 100)
    )
    assert {k: len(v) for k, v in large.items()} == {"train_a": 100, "train_b": 100, "val": 100, "test": 50}
    for half in ("train_a", "train_b"):
        assert small[half]["text"] == large[half]["text"]
    assert large["val"]["text"][:20] == small["val"]["text"]


def test_train_and_test_draw_independent_answer_choices(make_cfg, data_dir):
    # The reference formatted every split with the same Random(seed): row i of train and
    # row i of test then always got the same correct/distractor coin flip.
    task = make_cfg("task=sciq").task
    rows = tasks.load_sources(task, data_dir)[0].select(range(64))
    as_train = tasks._format(rows, task, 0, "train")["label"]
    as_test = tasks._format(rows, task, 0, "test")["label"]
    assert as_train != as_test


def test_boolq_offline_single_split_is_cut_deterministically(make_cfg, data_dir):
    task = make_cfg("task=boolq", "task.n_train=400", "task.n_val=0", "task.n_test=5000").task
    train, test = tasks.load_sources(task, data_dir)
    assert len(test) == 3270 // 3 and len(train) + len(test) == 3270
    assert not set(train["question"]) & set(test["question"])
    assert tasks.load_sources(task, data_dir)[1]["question"] == test["question"]


def test_custom_task_maps_yes_no_labels(tmp_path, make_cfg):
    path = tmp_path / "reviews.csv"
    path.write_text("title,verdict\n" + "".join(f"review {i},{'Yes' if i % 2 else 'no'}\n" for i in range(60)))
    task = make_cfg(
        "task=custom",
        f"task.path={path}",
        "task.text_template='Review: {title}'",
        "task.label_column=verdict",
        "task.n_train=30",
        "task.n_val=0",
        "task.n_test=20",
    ).task
    splits = tasks.load_splits(task, None, seed=0)
    assert len(splits["test"]) == 20 and len(splits["train_a"]) == 15
    row = splits["test"][0]
    assert row["text"].startswith("Review: review ")
    assert row["label"] == int(row["text"].split()[-1]) % 2


@pytest.mark.parametrize("value,label", [(True, 1), ("no", 0), ("TRUE", 1), (0, 0), ("1", 1), (1.0, 1)])
def test_binary_labels(value, label):
    assert formatters.to_binary_label(value, "x") == label


def test_bad_label_value_names_the_column_and_choices():
    with pytest.raises(DataError, match=r"label column 'stars' holds 'maybe'.*yes"):
        formatters.to_binary_label("maybe", "stars")


def test_single_class_data_is_refused(tmp_path, make_cfg):
    path = tmp_path / "one_class.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": "yes"}) + "\n" for i in range(30)))
    task = make_cfg("task=custom", f"task.path={path}", "task.n_train=20", "task.n_val=0").task
    with pytest.raises(DataError, match="holds only class 1"):
        tasks.load_splits(task, None, seed=0)


def test_missing_data_names_where_it_looked_and_the_fix(tmp_path, make_cfg):
    task = make_cfg("task=sciq").task
    with pytest.raises(DataError) as err:
        tasks.load_splits(task, str(tmp_path), seed=0)
    message = str(err.value)
    assert str(tmp_path / "sciq") in message and "W2S_DATA_DIR" in message and "allenai/sciq" in message


def test_unknown_task_lists_the_choices(make_cfg):
    with pytest.raises(MissingConfigException) as err:
        make_cfg("task=scique")
    assert "scique" in str(err.value) and "sciq" in str(err.value) and "boolq" in str(err.value)
