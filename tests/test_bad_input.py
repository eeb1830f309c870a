"""The catalogue of bad input (docs/reference.md, "Bad input"): each kind gets a clear error that names the
value, the choices or the fix, raised before any stage trains. One test per entry here; the
entries whose test lives beside the code it checks are listed in ELSEWHERE."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from w2s_lightning import pipeline, preflight, tasks
from w2s_lightning.errors import CacheError, ConfigError, DataError, ModelError, W2SError
from w2s_lightning.runner import StageRunner

ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def reviews(n: int = 40, label=lambda i: i % 2) -> list[dict]:
    return [{"review": f"review number {i} {'good' if i % 2 else 'bad'}", "label": label(i)} for i in range(n)]


def custom(path: Path, *more: str) -> list[str]:
    return [
        "task=custom",
        f"task.path={path}",
        "task.text_template='{review}'",
        "task.n_train=20",
        "task.n_val=4",
        "task.n_test=8",
        *more,
    ]


def refused(make_cfg, tmp_path, overrides: list[str], error: type[W2SError], pattern: str) -> None:
    """``overrides`` stop the run with ``error`` matching ``pattern``, and nothing was trained."""
    with pytest.raises(error, match=pattern):
        pipeline.run(make_cfg(*overrides))
    stages = tmp_path / "cache" / "stages"
    assert not stages.exists() or not [p for p in stages.iterdir() if p.is_dir() and not p.name.startswith(".")]


@pytest.mark.parametrize(
    "override, choice",
    [
        ("task=scique", "sciq"),
        ("model@weak=gpt5", "minilm_l3"),
        ("loss=aux", "aux_conf"),
        ("method=distill", "bootstrap"),
        ("experiment=paper", "paper_nlp"),
    ],
)
def test_an_unknown_task_model_loss_method_or_preset_lists_the_choices(override, choice):
    with (
        initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"),
        pytest.raises(
            HydraException, match=rf"(?s)Could not find '.*{override.split('=')[1]}'.*Available options.*{choice}"
        ),
    ):
        compose(config_name="config", overrides=[override])


def test_missing_data_says_where_it_looked_and_where_to_put_it(make_cfg, tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    refused(
        make_cfg,
        tmp_path,
        ["task=sciq", f"paths.data_dir={empty}"],
        DataError,
        r"no data for task 'sciq', split 'train': no local folder .*Put the split at <data_dir>/sciq/train\.jsonl",
    )


def test_a_missing_split_file_is_named(make_cfg, tmp_path):
    refused(
        make_cfg, tmp_path, custom(tmp_path / "nowhere.jsonl"), DataError, r"task.path=.*nowhere.jsonl does not exist"
    )


def test_an_empty_file_is_named(make_cfg, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    refused(make_cfg, tmp_path, custom(tmp_path / "empty.jsonl"), DataError, r"empty.jsonl is empty \(0 bytes\)")


def test_a_malformed_jsonl_line_is_named_by_its_number(make_cfg, tmp_path):
    path = write_jsonl(tmp_path / "broken.jsonl", reviews())
    lines = path.read_text().splitlines()
    lines[6] = '{"review": "cut off mid-wri'
    path.write_text("\n".join(lines) + "\n")
    refused(
        make_cfg, tmp_path, custom(path), DataError, r"broken.jsonl cannot be read as json: line 7 is not valid JSON"
    )


def test_a_missing_label_column_is_named_with_the_columns_there(make_cfg, tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", reviews())
    refused(
        make_cfg,
        tmp_path,
        custom(path, "task.label_column=verdict"),
        DataError,
        r"task.label_column 'verdict' is not a column; the rows have \['label', 'review'\]",
    )


def test_a_template_naming_a_missing_column_is_named(make_cfg, tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", reviews())
    refused(
        make_cfg,
        tmp_path,
        custom(path, "task.text_template='{title}: {review}'"),
        DataError,
        r"names the column 'title', but the rows have columns \['label', 'review'\]",
    )


def test_labels_that_are_not_binary_are_refused_with_the_accepted_values(make_cfg, tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", reviews(label=lambda i: i % 3))
    refused(make_cfg, tmp_path, custom(path), DataError, r"holds 2, which is not a binary label. Accepted values")


def test_a_split_with_one_class_is_refused(make_cfg, tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", reviews(label=lambda i: 1))
    refused(make_cfg, tmp_path, custom(path), DataError, r"split \w+ holds only class 1")


def test_sizes_larger_than_the_data_say_what_was_used(make_cfg, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    path = write_jsonl(tmp_path / "r.jsonl", reviews(60))
    cfg = make_cfg(*custom(path, "task.n_train=500", "task.n_test=100"))
    splits = tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed)
    assert "n_test asks for 100 rows but only 20 exist; using 20" in caplog.text
    assert "n_train + n_val asks for 504 rows but only 40 exist; using 40" in caplog.text
    assert len(splits["test"]) == 20


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("task.n_test=0", r"task.n_test=0: PGR is measured on the test split"),
        ("task.n_val=-1", r"task.n_val=-1 is negative"),
        ("task.n_train=1", r"task.n_train=1: need at least 2 rows"),
    ],
)
def test_zero_or_negative_sizes_are_refused(make_cfg, tmp_path, tiny_overrides, override, pattern):
    refused(make_cfg, tmp_path, [*tiny_overrides, override], ConfigError, pattern)


def test_a_batch_that_does_not_split_into_micro_batches_is_refused(make_cfg, tmp_path, tiny_overrides):
    refused(
        make_cfg,
        tmp_path,
        [*tiny_overrides, "train.batch_size=24"],
        ConfigError,
        r"train.batch_size=24 is not a multiple of tiny-bert's minibatch_size=16; change one of them",
    )


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("strong.lr=0", r"model 'tiny-llama': learning rate 0 .* must be positive"),
        ("finetune.lr=-1e-5", r"learning rate -1e-05 .* must be positive"),
        ("train.head_lr=0", r"train.head_lr=0 must be positive"),
    ],
)
def test_a_learning_rate_that_is_not_positive_is_refused(make_cfg, tmp_path, tiny_overrides, override, pattern):
    refused(make_cfg, tmp_path, [*tiny_overrides, override], ConfigError, pattern)


def test_zero_epochs_are_refused(make_cfg, tmp_path, tiny_overrides):
    refused(make_cfg, tmp_path, [*tiny_overrides, "train.epochs=0"], ConfigError, r"train.epochs=0 .* trains nothing")


def test_an_unknown_pooling_lists_the_choices(make_cfg, tmp_path, tiny_overrides):
    refused(
        make_cfg,
        tmp_path,
        [*tiny_overrides, "strong.pooling=max"],
        ConfigError,
        r"pooling='max' is unknown; choose one of \['first', 'last', 'mean'\]",
    )


def test_a_model_path_that_does_not_exist_says_what_works(make_cfg, tmp_path, tiny_overrides):
    # The strong model's: found out before the weak model trains.
    refused(
        make_cfg,
        tmp_path,
        [*tiny_overrides, f"strong.path={tmp_path / 'no-such-model'}"],
        ModelError,
        r"model 'tiny-llama': cannot load .*no-such-model.*local HF folder works",
    )


def test_a_tokenizer_with_neither_pad_nor_eos_is_refused(make_cfg, tmp_path, tiny_overrides):
    folder = tmp_path / "no-pad"
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(["review", "number", "good", "bad"])}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(folder)
    BertModel(
        BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    ).save_pretrained(folder)
    refused(
        make_cfg,
        tmp_path,
        [*tiny_overrides, f"strong.path={folder}"],
        ModelError,
        r"model 'tiny-llama': the tokenizer in .*no-pad has neither a pad nor an eos token.*add_special_tokens",
    )


def test_texts_longer_than_the_models_positions_are_cut_to_them_with_a_warning(make_cfg, tiny_overrides, caplog):
    caplog.set_level(logging.WARNING)
    cfg = make_cfg(*tiny_overrides, "weak.max_length=4096")  # tiny-bert has 128 positions
    runner = StageRunner(cfg, tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed))
    _, tokenized = runner.tokenized(cfg.weak)
    assert (
        "model 'tiny-bert': max_length=4096 is more than its 128 positions; texts are cut to 128 tokens" in caplog.text
    )
    assert max(len(ids) for ids in tokenized["train_a"]["input_ids"]) <= 128


@pytest.mark.parametrize("key", ["paths.cache_dir", "paths.output_dir"])
def test_an_unwritable_cache_or_output_folder_is_named_before_anything_runs(make_cfg, tmp_path, tiny_overrides, key):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder should go")
    target = "paths.stage_dir" if key == "paths.cache_dir" else key
    refused(
        make_cfg,
        tmp_path,
        [*tiny_overrides, f"{key}={blocker / 'sub'}"],
        CacheError,
        rf"{re.escape(target)}=.*a-file/sub.* cannot be written \(.*\); point {re.escape(target)}",
    )


# Entries whose test sits beside the code it checks: (catalogue entry, test).
ELSEWHERE = {
    "a NaN or infinite loss": "tests/test_pipeline.py::test_nan_loss_stops_with_advice_and_caches_nothing",
    "a full disk while publishing an entry": (
        "tests/test_cache.py::test_a_full_disk_while_publishing_says_so_and_publishes_nothing"
    ),
    "an unknown zoo model or missing causal wheels": (
        "tests/test_zoo.py::test_an_unknown_zoo_model_stops_the_run_before_any_stage"
    ),
    "full fine-tuning that outgrows the memory": (
        "tests/test_config.py::test_full_fine_tuning_that_outgrows_memory_is_refused_up_front"
    ),
    "multi-device settings that cannot run": (
        "tests/test_pipeline.py::test_multi_device_settings_that_cannot_run_are_refused_before_training"
    ),
    "selection on an empty validation split": (
        "tests/test_methods.py::test_selection_settings_that_cannot_work_are_refused"
    ),
    "task.n_val=0 (allowed: nothing is validated)": (
        "tests/test_pipeline.py::test_an_empty_validation_split_is_not_predicted"
    ),
    "a data file without a column its task reads": (
        "tests/test_task_suite.py::test_a_file_without_the_columns_its_task_reads_is_named"
    ),
    "a `hidden_layer` the model does not have": "tests/test_models.py::test_hidden_layer_reads_the_layer_it_names",
    "an image model on a text task, or the reverse": "tests/test_vision.py::test_a_text_task_refuses_an_image_model",
    "LoRA, generative fine-tuning or an unknown scratch model on images": (
        "tests/test_vision.py::test_an_image_model_and_a_text_task_do_not_mix"
    ),
    "an image task without its idx files": "tests/test_vision.py::test_a_missing_image_folder_names_the_install",
}


def test_the_docs_catalogue_names_every_entry_and_its_test():
    page = (ROOT / "docs" / "reference.md").read_text()
    table = page[page.index("## Bad input") :]
    names = [
        name.removeprefix("test_")
        for name, item in globals().items()
        if name.startswith("test_")
        and callable(item)
        and name != "test_the_docs_catalogue_names_every_entry_and_its_test"
    ]
    for name in names:
        assert f"test_bad_input.py::test_{name}" in table, name
    for entry, test in ELSEWHERE.items():
        assert entry in table and test.split("::")[1] in table, entry
        path, test_name = test.split("::")
        assert f"def {test_name}(" in (ROOT / path).read_text(), test
    assert len(names) + len(ELSEWHERE) >= 20


def test_a_negative_seed_names_the_setting(make_cfg, tmp_path, tiny_overrides):
    refused(make_cfg, tmp_path, [*tiny_overrides, "seed=-1"], ConfigError, r"seed=-1: the experiment seed must be")


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("loss.fn.aux_coef=-1", r"loss.fn.aux_coef=-1: .* in \[0, 1\]"),
        ("loss.fn.warmup_frac=2", r"loss.fn.warmup_frac=2: a share of training"),
    ],
)
def test_an_aux_conf_setting_it_cannot_mean_is_refused_before_training(
    make_cfg, tmp_path, tiny_overrides, override, pattern
):
    refused(make_cfg, tmp_path, [*tiny_overrides, "loss=aux_conf", override], ConfigError, pattern)


def test_a_single_run_with_the_weak_model_larger_runs_the_pair_it_names(make_cfg, tiny_overrides, caplog):
    cfg = make_cfg(*tiny_overrides, "weak.params=2e9", "strong.params=1e6", "ladder.cross_family=true")
    assert preflight.skip_reason(cfg, sweep=False) is None
    assert "larger than the strong one" in caplog.text
    assert "the weak model is larger" in preflight.skip_reason(cfg, sweep=True)


def test_string_labels_of_a_csv_become_zero_and_one(make_cfg, tmp_path):
    """positive/negative (accepted values) in a string column: the formatted label is an int."""
    path = tmp_path / "r.csv"
    path.write_text(
        "review,label\n" + "".join(f"review {i},{'positive' if i % 2 else 'negative'}\n" for i in range(40))
    )
    cfg = make_cfg(
        "task=custom", f"task.path={path}", "task.text_template='{review}'", "task.n_train=20", "task.n_test=10"
    )
    splits = tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed)
    assert set(splits["train_a"]["label"]) == {0, 1} and tasks.class_balance(splits)["test"]["rows"] == 10
