"""Tasks: where a task's rows come from and how each row becomes a binary example.

Every task is made binary as the paper does it (``formatters.py``) and turned into rows with
two columns, ``text`` and ``label`` (0/1). Rows come from ``<data_dir>/<task>/<split>.{jsonl,csv,parquet}``
when that folder exists, else from the Hugging Face hub.

Splits: the task's train source is shuffled with the experiment seed and cut into a
validation part and two halves, A (ground truth for the weak model and the ceiling) and
B (labelled by the weak model for the transfer). The test split is picked with the fixed
``split_seed``, so it is the same for every experiment seed.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import datasets
from omegaconf import DictConfig

from w2s_lightning.errors import ConfigError, DataError
from w2s_lightning.formatters import FORMATTERS

log = logging.getLogger(__name__)

LOCAL_FORMATS = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}

# --------------------------------------------------------------------------------------
# Loading


def _local_file(folder: Path, split: str) -> Path | None:
    for suffix in LOCAL_FORMATS:
        path = folder / f"{split}.{suffix}"
        if path.exists():
            return path
    return None


def _read_file(path: Path) -> datasets.Dataset:
    fmt = LOCAL_FORMATS.get(path.suffix.lstrip("."))
    if fmt is None:
        raise DataError(f"{path}: unsupported file type; use one of {sorted(LOCAL_FORMATS)}.")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes): write its rows there, one example per line or row.")
    try:
        rows = datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as err:  # noqa: BLE001 - say where the file is broken, not where the reader gave up
        raise DataError(f"{path} cannot be read as {fmt}: {_first_bad_line(path) or err}") from err
    if len(rows) == 0:
        raise DataError(f"{path} holds no rows (only a header?): write its examples there.")
    return rows


def _first_bad_line(path: Path) -> str | None:
    """For a jsonl file: the first line that is not a JSON object, by number."""
    if path.suffix != ".jsonl":
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                if not isinstance(json.loads(line), dict):
                    return f"line {number} is not a JSON object ({line.strip()[:60]!r}); fix or remove it."
            except ValueError as err:
                return f"line {number} is not valid JSON ({err}: {line.strip()[:60]!r}); fix or remove it."
    return None


def _load_hub(task: DictConfig, split: str, looked_in: str) -> datasets.Dataset:
    split = task.get("hub_splits", {}).get(split, split)
    try:
        return datasets.load_dataset(task.hub_path, task.get("hub_name"), split=split)
    except Exception as err:  # noqa: BLE001 - any hub failure gets the same advice
        raise DataError(
            f"no data for task '{task.name}', split '{split}': {looked_in}, and the hub "
            f"dataset '{task.hub_path}' could not be loaded ({type(err).__name__}: {err}). "
            f"Put the split at <data_dir>/{task.name}/{split}.jsonl (or .csv/.parquet) and point "
            "W2S_DATA_DIR or paths.data_dir at <data_dir>, or run where the hub is reachable."
        ) from err


def load_sources(task: DictConfig, data_dir: str | None) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Raw (train source, test source) rows for a task, from local files or the hub."""
    if task.formatter == "template":
        return _load_custom(task)
    train_name, test_name = task.splits.train, task.splits.test
    folder = Path(data_dir) / task.name if data_dir else None
    if folder is not None and folder.is_dir():
        train_file, test_file = _local_file(folder, train_name), _local_file(folder, test_name)
        if train_file and test_file:
            return _read_file(train_file), _read_file(test_file)
        if train_file or test_file:
            only = train_file or test_file
            log.info("%s: only %s is available locally; cutting it into train and test", task.name, only.name)
            return _cut_single_source(_read_file(only), task)
        looked_in = f"{folder} holds neither {train_name}.* nor {test_name}.*"
    else:
        looked_in = f"no local folder {folder}" if folder else "no data_dir is set"
    return _load_hub(task, train_name, looked_in), _load_hub(task, test_name, looked_in)


def _load_custom(task: DictConfig) -> tuple[datasets.Dataset, datasets.Dataset]:
    if not task.get("path"):
        raise ConfigError("task=custom needs task.path=<file.jsonl|csv|parquet> (and optionally task.test_path).")
    for key in ("path", "test_path"):
        if task.get(key) and not Path(task[key]).exists():
            raise DataError(f"task.{key}={task[key]} does not exist; give the path of a jsonl, csv or parquet file.")
    rows = _read_file(Path(task.path))
    if task.get("test_path"):
        return rows, _read_file(Path(task.test_path))
    return _cut_single_source(rows, task)


def _cut_single_source(rows: datasets.Dataset, task: DictConfig) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Deterministically cut one source into (train, test); test gets min(n_test, a third)."""
    rows = rows.shuffle(seed=task.split_seed)
    n_test = min(task.n_test, len(rows) // 3)
    return rows.select(range(n_test, len(rows))), rows.select(range(n_test))


# --------------------------------------------------------------------------------------
# Formatting and splitting


def _format(rows: datasets.Dataset, task: DictConfig, seed: int, role: str) -> datasets.Dataset:
    fmt = FORMATTERS[task.formatter]

    def apply(row: dict, index: int) -> dict:
        # One generator per row, keyed by its role and position: train and test draw
        # independent answer choices (the reference reused one Random(seed) for every split).
        return fmt(row, random.Random(f"{seed}/{role}/{index}"), task)

    return rows.map(apply, with_indices=True, remove_columns=rows.column_names, desc=f"format {task.name}/{role}")


def _take(rows: datasets.Dataset, n: int, what: str, task: DictConfig) -> int:
    if len(rows) < n:
        log.warning("%s: %s asks for %d rows but only %d exist; using %d", task.name, what, n, len(rows), len(rows))
        return len(rows)
    return n


def check_task(task: DictConfig) -> None:
    if task.formatter not in FORMATTERS:
        raise ConfigError(f"task.formatter={task.formatter!r} is unknown; choose one of {sorted(FORMATTERS)}.")
    if task.n_train < 2:
        raise ConfigError(f"task.n_train={task.n_train}: need at least 2 rows to cut halves A and B.")
    if task.n_test < 1:
        raise ConfigError(f"task.n_test={task.n_test}: PGR is measured on the test split; give it at least 1 row.")
    if task.n_val < 0:
        raise ConfigError(f"task.n_val={task.n_val} is negative; use 0 (no validation split) or more.")


def load_splits(task: DictConfig, data_dir: str | None, seed: int) -> datasets.DatasetDict:
    """The experiment's splits: ``train_a``, ``train_b``, ``val`` and ``test`` (text, label)."""
    check_task(task)
    train_src, test_src = load_sources(task, data_dir)

    n_test = _take(test_src, task.n_test, "n_test", task)
    test_rows = test_src.shuffle(seed=task.split_seed).select(range(n_test))
    test = _format(test_rows, task, task.split_seed, "test")

    n_pool = _take(train_src, task.n_train + task.n_val, "n_train + n_val", task)
    n_val = min(task.n_val, n_pool // 5)
    n_half = (n_pool - n_val) // 2
    pool = _format(train_src.shuffle(seed=seed).select(range(n_pool)), task, seed, "train")
    # Lists, not ranges: datasets refuses an empty range that starts at the end (n_val = 0).
    splits = datasets.DatasetDict(
        train_a=pool.select(list(range(n_half))),
        train_b=pool.select(list(range(n_half, 2 * n_half))),
        val=pool.select(list(range(2 * n_half, 2 * n_half + n_val))),
        test=test,
    )
    check_balance(splits, task.name)
    return splits


def class_balance(splits: datasets.DatasetDict) -> dict[str, dict[str, float]]:
    return {
        name: {"rows": len(rows), "positive_rate": (sum(rows["label"]) / len(rows)) if len(rows) else float("nan")}
        for name, rows in splits.items()
    }


def check_balance(splits: datasets.DatasetDict, task_name: str) -> None:
    for name, stats in class_balance(splits).items():
        log.info("%s/%s: %d rows, %.1f%% positive", task_name, name, stats["rows"], 100 * stats["positive_rate"])
        if name != "val" and stats["rows"] == 0:
            raise DataError(f"task '{task_name}': split {name} is empty; raise task.n_train / task.n_test.")
        if name in ("train_a", "test") and stats["positive_rate"] in (0.0, 1.0):
            only = int(stats["positive_rate"])
            raise DataError(
                f"task '{task_name}': split {name} holds only class {only} ({stats['rows']} rows). "
                "A binary classifier needs both classes: check the label column or template, "
                "and that the data is not sorted by label with too small an n_train/n_test."
            )
