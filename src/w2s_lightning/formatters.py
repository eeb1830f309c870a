"""Formatters: how a row of each task becomes a binary example ``{text, label}``, as the
paper does it. ``task.formatter`` names one; ``@formatter("name")`` registers a new one."""

from __future__ import annotations

import random
from typing import Any, Callable

from omegaconf import DictConfig

from w2s_lightning.errors import DataError

Formatter = Callable[[dict, random.Random, DictConfig], dict]
FORMATTERS: dict[str, Formatter] = {}


def formatter(name: str) -> Callable[[Formatter], Formatter]:
    def register(fn: Formatter) -> Formatter:
        FORMATTERS[name] = fn
        return fn

    return register


@formatter("sciq")
def format_sciq(row: dict, rng: random.Random, task: DictConfig) -> dict:
    label = int(rng.random() < 0.5)
    answer = row["correct_answer"] if label else rng.choice(
        [row["distractor1"], row["distractor2"], row["distractor3"]]
    )
    return {"text": f"Q: {row['question']} A: {answer}", "label": label}


@formatter("boolq")
def format_boolq(row: dict, rng: random.Random, task: DictConfig) -> dict:
    return {"text": f"Passage: {row['passage']}\nQuestion: {row['question']}", "label": int(row["answer"])}


@formatter("cosmos_qa")
def format_cosmos_qa(row: dict, rng: random.Random, task: DictConfig) -> dict:
    answers = [row[f"answer{i}"] for i in range(4)]
    true_answer = answers[int(row["label"])]
    # The reference's rule: when the right answer is "None of the above choices ." every
    # other answer is also wrong, so the example is always shown with a wrong answer.
    label = 0 if "None of the above choices ." in true_answer else int(rng.random() < 0.5)
    answer = true_answer if label else rng.choice([a for a in answers if a != true_answer])
    text = f"Context: {row['context']}\nQuestion: {row['question']}\nAnswer: {answer}"
    return {"text": text, "label": label}


@formatter("amazon_polarity")
def format_amazon_polarity(row: dict, rng: random.Random, task: DictConfig) -> dict:
    return {"text": f"{row['title']} {row['content']}", "label": int(row["label"])}


@formatter("sst2")
def format_sst2(row: dict, rng: random.Random, task: DictConfig) -> dict:
    return {"text": row["sentence"], "label": int(row["label"])}


def _split_dialogue(dialogue: str) -> tuple[str, str]:
    """Cut an hh-rlhf dialogue into (conversation so far, last assistant reply)."""
    marker = "\n\nAssistant:"
    cut = dialogue.rfind(marker)
    return dialogue[:cut].strip(), dialogue[cut + len(marker):].strip()


@formatter("anthropic_hh")
def format_anthropic_hh(row: dict, rng: random.Random, task: DictConfig) -> dict:
    # Pairwise, unlike the reference: one response alone carries almost no signal about
    # whether annotators preferred it (the reference's version sits at chance).
    # Label 1 means response A is the one annotators chose.
    prompt, chosen = _split_dialogue(row["chosen"])
    _, rejected = _split_dialogue(row["rejected"])
    label = int(rng.random() < 0.5)
    first, second = (chosen, rejected) if label else (rejected, chosen)
    text = f"{prompt}\n\nResponse A: {first}\n\nResponse B: {second}\n\nIs response A better than B?"
    return {"text": text, "label": label}


TRUE_VALUES = {"1", "1.0", "yes", "y", "true", "t", "positive", "pos"}
FALSE_VALUES = {"0", "0.0", "no", "n", "false", "f", "negative", "neg"}


def to_binary_label(value: Any, column: str) -> int:
    """Map yes/no, true/false, 0/1 (as bools, numbers or strings) to 0/1."""
    text = str(value).strip().lower()
    if text in TRUE_VALUES:
        return 1
    if text in FALSE_VALUES:
        return 0
    raise DataError(
        f"label column '{column}' holds {value!r}, which is not a binary label. "
        f"Accepted values: {sorted(TRUE_VALUES)} -> 1, {sorted(FALSE_VALUES)} -> 0. "
        "Map the column to one of these before loading."
    )


@formatter("template")
def format_template(row: dict, rng: random.Random, task: DictConfig) -> dict:
    try:
        text = task.text_template.format(**row)
    except KeyError as missing:
        raise DataError(
            f"task.text_template {task.text_template!r} names the column {missing}, "
            f"but the rows have columns {sorted(row)}."
        ) from None
    if task.label_column not in row:
        raise DataError(
            f"task.label_column '{task.label_column}' is not a column; the rows have {sorted(row)}."
        )
    return {"text": text, "label": to_binary_label(row[task.label_column], task.label_column)}
