"""Secrets out of everything a run writes down: the config in results.json, in each W&B run
and (through results.json) in the report. A key named like a secret (api_key, token,
password, secret) has its value replaced, and so does any value that holds a secret from the
environment (WANDB_API_KEY, HF_TOKEN, or any variable named like one), however it got there
(``${oc.env:...}``, a typed override)."""

from __future__ import annotations

import os
import re
from typing import Any

SECRET_NAME = re.compile(r"api_?key|token|secret|passw(or)?d|credential", re.IGNORECASE)
REDACTED = "<redacted>"
# Environment values shorter than this are not treated as secrets (a variable like TOKENIZERS_PARALLELISM=false).
MIN_SECRET_LENGTH = 8


def environment_secrets() -> list[str]:
    return [value for name, value in os.environ.items() if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH]


def redacted(value: Any, secrets: list[str] | None = None) -> Any:
    """``value`` (a config as plain dicts and lists) with every secret replaced by <redacted>."""
    secrets = environment_secrets() if secrets is None else secrets
    if isinstance(value, dict):
        return {
            key: REDACTED
            if isinstance(key, str) and SECRET_NAME.search(key) and item not in (None, "")
            else redacted(item, secrets)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redacted(item, secrets) for item in value]
    if isinstance(value, str) and any(secret in value for secret in secrets):
        return REDACTED
    return value
