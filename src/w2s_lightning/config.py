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


def cpu_precision() -> str:
    """bf16 autocast on CPUs with native bf16 matrix units (AMX, AVX512-BF16), where it runs
    several times faster than fp32; full fp32 elsewhere, where bf16 is emulated and slower."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "32-true"
    return "bf16-mixed" if ("amx_bf16" in cpuinfo or "avx512_bf16" in cpuinfo) else "32-true"


OmegaConf.register_new_resolver("w2s_data_dir", default_data_dir, replace=True)
OmegaConf.register_new_resolver("w2s_cpu_precision", cpu_precision, replace=True)
