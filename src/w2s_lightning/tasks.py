"""Tasks: where a task's rows come from and how each row becomes a binary example.

Every task is made binary as the paper does it (``formatters.py``) and turned into rows with
the columns ``text`` and ``label`` (0/1), plus ``text_b`` for a pairwise task (reward
modelling). Rows come from ``<data_dir>/<task>/<split>.{jsonl,csv,parquet}`` (or the task's
``local_files``) when they exist, else from the Hugging Face hub.

Splits: the task's train source is shuffled with the experiment seed and cut into a
validation part and two halves, A (ground truth for the weak model and the ceiling) and
B (labelled by the weak model for the transfer). The test split is picked with the fixed
``split_seed``, so it is the same for every experiment seed; so is the cut of a task that has
one labelled source. A task with ``balance: true`` is formatted whole and its majority class
undersampled (seeded) before the rows are taken.

Why it is long: hub and local sources, single-source cuts, balancing and the column checks
are steps of one function's job, loading a task's splits, and share its error messages.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import datasets
import numpy as np
from omegaconf import DictConfig

from w2s_lightning.errors import ConfigError, DataError
from w2s_lightning.formatters import FORMATTERS, LEFT_OUT

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
    except Exception as err:
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


def _load_hub(task: DictConfig, role: str, looked_in: str) -> datasets.Dataset:
    """The hub's rows for ``role`` (train or test): its split name is ``hub_splits[role]``
    where the hub's differs from the local one, ``splits[role]``."""
    split = task.hub_splits.get(role, task.splits[role])
    try:
        if not task.hub_path:
            raise ValueError("the task names no hub dataset (task.hub_path)")
        subsets = [
            datasets.load_dataset(task.hub_path, task.hub_name, data_dir=data_dir, split=split)
            for data_dir in task.hub_data_dirs or [None]
        ]
        rows = datasets.concatenate_datasets(subsets)
    except Exception as err:
        raise DataError(
            f"no data for task '{task.name}', split '{split}': {looked_in}, and the hub "
            f"dataset '{task.hub_path}' could not be loaded ({type(err).__name__}: {err}). "
            f"Put the split at <data_dir>/{task.name}/{task.splits[role]}.jsonl (or .csv/.parquet) and point "
            "W2S_DATA_DIR or paths.data_dir at <data_dir>, or run where the hub is reachable."
        ) from err
    return check_columns(rows, task, f"the hub's {task.hub_path} {split}")


def check_columns(rows: datasets.Dataset, task: DictConfig, source: str) -> datasets.Dataset:
    """Stop before any stage when the rows lack a column the task's formatter reads."""
    missing = [c for c in task.columns if c not in rows.column_names]
    if missing:
        raise DataError(
            f"task '{task.name}': {source} lacks the column(s) {missing}; the formatter "
            f"'{task.formatter}' reads {list(task.columns)}, the rows have {rows.column_names}."
        )
    return rows


def _load_local_files(task: DictConfig, data_dir: str | None) -> tuple[datasets.Dataset, datasets.Dataset] | None:
    """A task whose local data is several files forming one labelled pool (``local_files``):
    joined and cut into (train, test); None when any of them is missing."""
    if not data_dir:
        return None
    files = [_local_file(Path(data_dir) / Path(stem).parent, Path(stem).name) for stem in task.local_files]
    if not all(files):
        return None
    pool = datasets.concatenate_datasets([check_columns(_read_file(f), task, str(f)) for f in files])
    return _cut_single_source(pool, task)


def load_sources(task: DictConfig, data_dir: str | None) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Raw (train source, test source) rows for a task, from local files or the hub."""
    if task.image_dir:
        from w2s_lightning import vision  # here: it imports torch and Lightning, which a plan does without

        return vision.load_sources(task)
    if task.formatter == "template":
        return _load_custom(task)
    if task.local_files:
        local = _load_local_files(task, data_dir)
        if local:
            return local
        looked_in = f"{data_dir or 'no data_dir is set'} lacks one of {list(task.local_files)}"
        return _load_hub(task, "train", looked_in), _load_hub(task, "test", looked_in)
    train_name, test_name = task.splits.train, task.splits.test
    folder = Path(data_dir) / task.name if data_dir else None
    if folder is not None and folder.is_dir():
        train_file, test_file = _local_file(folder, train_name), _local_file(folder, test_name)
        if train_file and test_file:
            return (
                check_columns(_read_file(train_file), task, str(train_file)),
                check_columns(_read_file(test_file), task, str(test_file)),
            )
        if train_file or test_file:
            only = train_file or test_file
            log.info("%s: only %s is available locally; cutting it into train and test", task.name, only.name)
            return _cut_single_source(check_columns(_read_file(only), task, str(only)), task)
        looked_in = f"{folder} holds neither {train_name}.* nor {test_name}.*"
    else:
        looked_in = f"no local folder {folder}" if folder else "no data_dir is set"
    return _load_hub(task, "train", looked_in), _load_hub(task, "test", looked_in)


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
    """Deterministically cut one source into (train, test); test gets min(n_test, a third), or
    a whole third for a task that balances its classes (balancing then drops rows). A pure
    function of the rows, the sizes and ``split_seed``: every experiment seed sees the same cut."""
    rows = rows.shuffle(seed=task.split_seed)
    n_test = len(rows) // 3 if task.balance else min(task.n_test, len(rows) // 3)
    return rows.select(range(n_test, len(rows))), rows.select(range(n_test))


# --------------------------------------------------------------------------------------
# Formatting and splitting


def example_features(task: DictConfig, source: datasets.Features) -> datasets.Features:
    """The formatted rows' columns, stated: ``datasets.map`` would otherwise keep a source
    column's type, and 0/1 written over HellaSwag's string ``label`` would come back as '0'/'1'.
    An image task keeps its source's ``image`` column."""
    if task.image_dir:
        return datasets.Features({"image": source["image"], "label": datasets.Value("int64")})
    texts = ("text", "text_b") if task.pairwise else ("text",)
    return datasets.Features({**{t: datasets.Value("string") for t in texts}, "label": datasets.Value("int64")})


def _format(rows: datasets.Dataset, task: DictConfig, seed: int, role: str) -> datasets.Dataset:
    fmt = FORMATTERS[task.formatter]

    def apply(row: dict, index: int) -> dict:
        # One generator per row, keyed by its role and position: train and test draw
        # independent answer choices (the reference reused one Random(seed) for every split).
        return fmt(row, random.Random(f"{seed}/{role}/{index}"), task)

    return rows.map(
        apply,
        with_indices=True,
        remove_columns=rows.column_names,
        features=example_features(task, rows.features),
        desc=f"format {task.name}/{role}",
    )


def balanced(rows: datasets.Dataset, seed: int, what: str) -> datasets.Dataset:
    """``rows`` without the left-out class (label -1) and with the majority class undersampled
    to the minority's count: the first rows of each class in a ``seed``-shuffled order. The
    log gives the balance before and after, under ``what``."""
    rows = rows.filter(lambda label: label != LEFT_OUT, input_columns="label")
    labels = np.asarray(rows["label"])
    keep = min(int((labels == 0).sum()), int((labels == 1).sum()))
    order = np.random.default_rng(seed).permutation(len(rows))
    chosen = np.concatenate([order[labels[order] == c][:keep] for c in (0, 1)])
    log.info(
        "%s: %.1f%% positive in %d rows, balanced to %d rows",
        what,
        100 * labels.mean() if len(labels) else 0.0,
        len(labels),
        len(chosen),
    )
    return rows.select(np.sort(chosen))


def _formatted(source: datasets.Dataset, n: int, task: DictConfig, seed: int, role: str, what: str) -> datasets.Dataset:
    """``n`` formatted rows of ``source`` in a ``seed``-shuffled order. A task that balances its
    classes formats the whole source first: undersampling needs every row's label."""
    source = source.shuffle(seed=seed)
    if not task.balance:
        return _format(source.select(range(_take(source, n, what, task))), task, seed, role)
    rows = balanced(_format(source, task, seed, role), seed, f"{task.name}/{role}")
    return rows.select(range(_take(rows, n, f"{what} (after balancing)", task)))


def _take(rows: datasets.Dataset, n: int, what: str, task: DictConfig) -> int:
    if len(rows) < n:
        log.warning("%s: %s asks for %d rows but only %d exist; using %d", task.name, what, n, len(rows), len(rows))
        return len(rows)
    return n


def in_ranges(rows: datasets.Dataset, task: DictConfig) -> datasets.Dataset:
    """``rows`` where every column named in ``task.ranges`` lies in its [low, high] (chess
    puzzles by rating: the paper's easy-to-hard axis)."""
    if not task.ranges:
        return rows
    for column, bounds in task.ranges.items():
        if column not in rows.column_names or len(bounds) != 2:
            raise ConfigError(
                f"task.ranges.{column}={list(bounds)}: give a column of the rows ({rows.column_names}) "
                "and [low, high], e.g. task.ranges={Rating: [1500, 2000]}."
            )
    kept = rows.filter(
        lambda row: all(low <= row[c] <= high for c, (low, high) in task.ranges.items()), desc=f"{task.name} ranges"
    )
    log.info("%s: %d of %d source rows within %s", task.name, len(kept), len(rows), dict(task.ranges))
    return kept


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
    train_src, test_src = (in_ranges(rows, task) for rows in load_sources(task, data_dir))

    test = _formatted(test_src, task.n_test, task, task.split_seed, "test", "n_test")
    pool = _formatted(train_src, task.n_train + task.n_val, task, seed, "train", "n_train + n_val")
    n_pool = len(pool)
    # Validation gets the rows it asks for when the source has them. A short source's
    # validation is cut to a fifth of what there is, so the halves keep the rest.
    n_val = task.n_val if n_pool >= task.n_train + task.n_val else min(task.n_val, n_pool // 5)
    n_half = (n_pool - n_val) // 2
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
