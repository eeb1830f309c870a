"""Formatters: how a row of each task becomes a binary example ``{text, label}``, as the
paper does it. ``task.formatter`` names one; ``@formatter("name")`` registers a new one.

Why it is long: one short function per task of the paper's 22, and the three conventions they share.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from w2s_lightning.errors import DataError

Formatter = Callable[[dict, random.Random, DictConfig], dict]
FORMATTERS: dict[str, Formatter] = {}


def formatter(name: str) -> Callable[[Formatter], Formatter]:
    def register(fn: Formatter) -> Formatter:
        FORMATTERS[name] = fn
        return fn

    return register


# Conventions, as the paper and the reference make every task one balanced binary example:
# - multiple choice: the right answer or a wrong one, by a seeded coin flip (``candidate``);
#   label 1 = the shown answer is right. Only the candidate depends on the label.
# - a pair (which of two is better): both, in a seeded random order (``in_random_order``);
#   label 1 = the first is the better one. Only the order depends on the label.
# - a native binary label: kept; the text never depends on it.
# A formatter returns label ``LEFT_OUT`` for a row of a class the binary task leaves out
# (TweetEval's neutral): tasks with ``balance: true`` drop such rows before balancing.
LEFT_OUT = -1


def coin(rng: random.Random) -> int:
    return int(rng.random() < 0.5)


def candidate(rng: random.Random, right: str, wrong: list[str]) -> tuple[int, str]:
    """(label, answer): the right answer (label 1) or one of the wrong ones (label 0)."""
    label = coin(rng)
    return label, (right if label else rng.choice(wrong))


def in_random_order(rng: random.Random, better: str, worse: str) -> tuple[int, str, str]:
    """(label, first, second): label 1 when the better one comes first."""
    label = coin(rng)
    return (label, better, worse) if label else (label, worse, better)


def choose(rng: random.Random, options: list[str], right: int) -> tuple[int, str]:
    """``candidate`` over a list of options and the index of the right one."""
    return candidate(rng, options[right], [o for i, o in enumerate(options) if i != right])


@formatter("sciq")
def format_sciq(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Multiple choice, as the reference (and EleutherAI): the question and one answer."""
    label, answer = candidate(rng, row["correct_answer"], [row["distractor1"], row["distractor2"], row["distractor3"]])
    return {"text": f"Q: {row['question']} A: {answer}", "label": label}


@formatter("boolq")
def format_boolq(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Native yes/no answer, as the reference and EleutherAI."""
    return {"text": f"Passage: {row['passage']}\nQuestion: {row['question']}", "label": int(row["answer"])}


@formatter("cosmos_qa")
def format_cosmos_qa(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Multiple choice, as the reference: an answer "None of the above choices ." that is right
    makes every other answer wrong too, so such a row is always shown with a wrong answer."""
    answers = [row[f"answer{i}"] for i in range(4)]
    true_answer = answers[int(row["label"])]
    label = 0 if "None of the above choices ." in true_answer else coin(rng)
    answer = true_answer if label else rng.choice([a for a in answers if a != true_answer])
    return {"text": f"Context: {row['context']}\nQuestion: {row['question']}\nAnswer: {answer}", "label": label}


@formatter("amazon_polarity")
def format_amazon_polarity(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Native label (positive), as the reference."""
    return {"text": f"{row['title']} {row['content']}", "label": int(row["label"])}


@formatter("sst2")
@formatter("cola")
def format_sentence(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Native label of one sentence (SST-2: positive; CoLA: acceptable), as EleutherAI."""
    return {"text": row["sentence"], "label": int(row["label"])}


@formatter("dream")
def format_dream(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Multiple choice over the three choices, as EleutherAI."""
    label, answer = candidate(rng, row["answer"], [c for c in row["choice"] if c != row["answer"]])
    dialogue = "\n".join(row["dialogue"])
    return {"text": f"{dialogue}\n\nQ: {row['question']} A: {answer}", "label": label}


@formatter("ethics_justice")
def format_ethics_justice(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Native label. EleutherAI's prompt ends in "A:"; here the question comes last, with no
    answer slot (an early version of theirs carried "A: yes/no", which leaked the label)."""
    return {"text": f"{row['scenario']}\n\nIs this statement just?", "label": int(row["label"])}


@formatter("ethics_deontology")
def format_ethics_deontology(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Native label (the excuse is reasonable); as EleutherAI but without the answer slot."""
    text = f"Scenario: {row['scenario']}\nExcuse: {row['excuse']}\n\nIs this excuse reasonable?"
    return {"text": text, "label": int(row["label"])}


@formatter("ethics_virtue")
def format_ethics_virtue(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Native label (the behaviour shows the trait). The release joins sentence and trait with
    " [SEP] "; they are shown apart here (EleutherAI shows the raw "[SEP]")."""
    sentence, _, trait = row["scenario"].rpartition(" [SEP] ")
    return {"text": f'{sentence}\n\nDoes this behaviour show the trait "{trait}"?', "label": int(row["label"])}


@formatter("ethics_utilitarianism")
def format_ethics_utilitarianism(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """A pair in random order; label 1 = scenario 1 is the more pleasant. EleutherAI instead
    shows the pair and a claimed answer ("A: 1" or "A: 2"), right or wrong by a coin flip."""
    label, first, second = in_random_order(rng, row["baseline"], row["less_pleasant"])
    text = f"Scenario 1: {first}\nScenario 2: {second}\n\nIs scenario 1 more pleasant than scenario 2?"
    return {"text": text, "label": label}


@formatter("anli")
def format_anli(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """3-way to binary as EleutherAI: label 1 = entailment; neutral and contradiction are both
    "not entailed" (0). That leaves a third positive, so the task balances by undersampling."""
    text = f"Premise: {row['premise']}\nHypothesis: {row['hypothesis']}\n\nDoes the premise entail the hypothesis?"
    return {"text": text, "label": int(int(row["label"]) == 0)}


@formatter("hellaswag")
def format_hellaswag(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Multiple choice: the context and one ending. EleutherAI also lists all four endings
    before the candidate; here the candidate alone follows the context, as SciQ's answer does.
    The hub stores the label as a string."""
    label, ending = choose(rng, list(row["endings"]), int(row["label"]))
    return {"text": f"{row['ctx']} {ending}", "label": label}


@formatter("mc_taco")
def format_mc_taco(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Native label (the answer is plausible), as EleutherAI."""
    text = f'{row["sentence"]}\n\nQ: {row["question"]} Is the answer "{row["answer"]}" plausible?'
    return {"text": text, "label": int(row["label"])}


@formatter("openbookqa")
def format_openbookqa(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Multiple choice: the question and one answer's text. EleutherAI's showed the answer's
    letter when right and a wrong answer's text when wrong: the form alone gave the label."""
    texts, letters = list(row["choices"]["text"]), list(row["choices"]["label"])
    label, answer = choose(rng, texts, letters.index(row["answerKey"]))
    return {"text": f"Q: {row['question_stem']} A: {answer}", "label": label}


@formatter("paws")
def format_paws(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Native label (paraphrase), as EleutherAI."""
    text = f"Sentence 1: {row['sentence1']}\nSentence 2: {row['sentence2']}\n\nDo they mean the same?"
    return {"text": text, "label": int(row["label"])}


@formatter("quail")
def format_quail(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Multiple choice over the four answers, as EleutherAI."""
    label, answer = choose(rng, list(row["answers"]), int(row["correct_answer_id"]))
    return {"text": f"{row['context']}\n\nQ: {row['question']} A: {answer}", "label": label}


@formatter("piqa")
def format_piqa(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Multiple choice over the two solutions, as EleutherAI."""
    label, solution = choose(rng, [row["sol1"], row["sol2"]], int(row["label"]))
    return {"text": f"Goal: {row['goal']}\nSolution: {solution}", "label": label}


@formatter("quartz")
def format_quartz(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Multiple choice over the two answers, as EleutherAI."""
    texts, letters = list(row["choices"]["text"]), list(row["choices"]["label"])
    label, answer = choose(rng, texts, letters.index(row["answerKey"]))
    return {"text": f"{row['para']}\n\nQ: {row['question']} A: {answer}", "label": label}


@formatter("social_i_qa")
def format_social_i_qa(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Multiple choice over the three answers. The hub's label is a 1-based string. EleutherAI
    also lists all three answers before the candidate; here the candidate alone is shown."""
    answers = [row["answerA"], row["answerB"], row["answerC"]]
    label, answer = choose(rng, answers, int(row["label"]) - 1)
    return {"text": f"{row['context']}\n\nQ: {row['question']} A: {answer}", "label": label}


@formatter("multirc")
def format_multirc(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Native label (this answer option is correct), as EleutherAI."""
    text = f'{row["paragraph"]}\n\nQ: {row["question"]} Is the answer "{row["answer"]}"?'
    return {"text": text, "label": int(row["label"])}


@formatter("wic")
def format_wic(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Native label (same meaning), as EleutherAI."""
    text = (
        f"Sentence 1: {row['sentence1']}\nSentence 2: {row['sentence2']}\n\n"
        f'Does "{row["word"]}" mean the same in both sentences?'
    )
    return {"text": text, "label": int(row["label"])}


@formatter("twitter_sentiment")
def format_twitter_sentiment(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Native binary label (positive), as EleutherAI."""
    return {"text": row["text"], "label": int(row["label"])}


@formatter("tweet_eval_sentiment")
def format_tweet_eval_sentiment(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """TweetEval's 0 negative / 1 neutral / 2 positive to binary: label 1 = positive; neutral is
    left out, as in the binary twitter-sentiment set EleutherAI's registry reads."""
    label = {0: 0, 1: LEFT_OUT, 2: 1}[int(row["label"])]
    return {"text": row["text"], "label": label}


def _split_dialogue(dialogue: str) -> tuple[str, str]:
    """Cut an hh-rlhf dialogue into (conversation so far, last assistant reply)."""
    marker = "\n\nAssistant:"
    cut = dialogue.rfind(marker)
    return dialogue[:cut].strip(), dialogue[cut + len(marker) :].strip()


@formatter("anthropic_hh")
def format_anthropic_hh(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """The pairwise-classifier baseline (a cross-encoder): the shared conversation, then both
    replies in random order as "Response A" and "Response B"; label 1 = A is the chosen one.
    EleutherAI (and the reference) show one whole dialogue alone, which sits at chance."""
    prompt, chosen = _split_dialogue(row["chosen"])
    _, rejected = _split_dialogue(row["rejected"])
    label, first, second = in_random_order(rng, chosen, rejected)
    text = f"{prompt}\n\nResponse A: {first}\n\nResponse B: {second}\n\nIs response A better than B?"
    return {"text": text, "label": label}


@formatter("hh_pair")
def format_hh_pair(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """Reward modelling, as the paper: a pair of whole dialogues (``text``, ``text_b``) in random
    order, each scored alone by the reward model; label 1 = the first is the chosen one."""
    label, first, second = in_random_order(rng, row["chosen"].strip(), row["rejected"].strip())
    return {"text": first, "text_b": second, "label": label}


@formatter("chess")
def format_chess(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """The paper's chess puzzles as a binary task (multiple choice): the position where the
    solver is to move (FEN, which says whose move it is) and one candidate move in UCI, the
    puzzle's best move or a legal wrong one, by a coin flip; label 1 = it is the puzzle's move.
    UCI, not SAN: SAN marks checks and mates, and best moves are far more often both."""
    label, move = candidate(rng, row["BestMove"], [row["WrongMove"]])
    side = "White" if row["PuzzleFEN"].split()[1] == "w" else "Black"
    return {"text": f"Chess position (FEN): {row['PuzzleFEN']}\n{side} to move. Candidate move: {move}", "label": label}


TRUE_VALUES = {"1", "1.0", "yes", "y", "true", "t", "positive", "pos"}
FALSE_VALUES = {"0", "0.0", "no", "n", "false", "f", "negative", "neg"}


@formatter("image_classes")
def format_image_classes(row: dict, rng: random.Random, task: DictConfig) -> dict:
    """An image task (vision.py): the image as it is; label 1 for ``positive_classes`` (the
    source holds only the classes the task names)."""
    return {"image": row["image"], "label": int(row["class"] in task.positive_classes)}


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
        raise DataError(f"task.label_column '{task.label_column}' is not a column; the rows have {sorted(row)}.")
    return {"text": text, "label": to_binary_label(row[task.label_column], task.label_column)}
