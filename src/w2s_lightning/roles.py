"""The role vocabulary: what a stage is for in its experiment. Methods name the stages they
ask for by role; results, the report and the console read them back by the same names.
"""

from __future__ import annotations

import re

# Roles: what a stage is for in its experiment (``rungN`` for the Nth bootstrapping rung).
WEAK, CEILING, TRANSFER, BOOTSTRAP = "weak", "ceiling", "transfer", "bootstrap"
GENERATIVE, FEATURES = "generative", "features"
# A supervisor's labels after a relabelling rule (relabel.py), and a weak ensemble's mean labels.
RELABELLED, ENSEMBLE = "relabelled", "ensemble"
# The stages of every experiment: PGR = (transfer - weak) / (ceiling - weak).
PGR_ROLES = (WEAK, TRANSFER, CEILING)


def rung(number: int) -> str:
    return f"rung{number}"


def s2s_round(number: int) -> str:
    """A strong-to-strong round's student (round 0: the direct transfer)."""
    return f"s2s{number}"


def is_rung(role: str) -> bool:
    return re.fullmatch(r"rung\d+", role) is not None


def display_order(roles) -> list[str]:
    """Weak first, then the students (transfer, rungs, bootstrap), the ceiling last."""
    roles = list(roles)
    order = [WEAK, TRANSFER, *sorted((r for r in roles if is_rung(r)), key=lambda r: int(r[4:])), BOOTSTRAP, CEILING]
    return [r for r in order if r in roles] + [r for r in roles if r not in order]
