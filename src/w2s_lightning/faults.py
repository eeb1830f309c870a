"""Failpoints, for the fault-injection tests: with ``W2S_KILL_AT=<point>:<n>`` in its
environment, a process kills itself with SIGKILL (no cleanup, no ``finally``: as the OOM
killer or a lost node would) the n-th time it reaches ``point``; ``<point>:<n>:SIGTERM`` sends
SIGTERM instead (as Slurm before preemption), which the process handles as it would one from
outside. The points: ``tokenise`` (a batch of rows being tokenised), ``train_step`` (a training
micro-batch, counted across stages), ``predict_batch`` and ``publish`` (an entry sealed, not
yet renamed into place). Unset, ``reached`` is a dictionary lookup."""

from __future__ import annotations

import os
import signal
from collections import Counter

KILL_AT = "W2S_KILL_AT"
_counts: Counter = Counter()


def reached(point: str) -> None:
    target = os.environ.get(KILL_AT)
    if not target or not target.startswith(f"{point}:"):
        return
    _counts[point] += 1
    _, count, *name = target.split(":")
    if _counts[point] == int(count):
        os.kill(os.getpid(), getattr(signal, name[0] if name else "SIGKILL"))
