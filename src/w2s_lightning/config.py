"""OmegaConf resolvers used by conf/ (registered on import)."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def default_data_dir() -> str | None:
    """$W2S_DATA_DIR, else the first ../shared/data that exists (beside the working
    directory or beside this checkout), else None: tasks then load from the hub."""
    if os.environ.get("W2S_DATA_DIR"):
        return os.environ["W2S_DATA_DIR"]
    checkout = Path(__file__).resolve().parents[2]
    for candidate in (Path.cwd().parent / "shared" / "data", checkout.parent / "shared" / "data"):
        if candidate.is_dir():
            return str(candidate.resolve())
    return None


OmegaConf.register_new_resolver("w2s_data_dir", default_data_dir, replace=True)
