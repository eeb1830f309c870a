"""Content-addressed artifacts: a folder per key, built once, atomically, under a lock.

A folder becomes visible under its final name only once it is complete (built in a
temporary sibling, then renamed), so a crash or a kill mid-build leaves at most a stray
``.tmp-*`` folder that nothing reads. A file lock per key makes a second process that
asks for the same key wait, then reuse what the first one built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

log = logging.getLogger(__name__)


def build_once(final: Path, build: Callable[[Path], None]) -> bool:
    """Make sure ``final`` exists, calling ``build(tmp_dir)`` if it does not.

    Returns True when this call built it, False when it was already there.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{final}.lock"):
        if final.exists():
            return False
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
        try:
            build(tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True


def content_key(spec: Any) -> str:
    """A short, stable hash of a JSON-serialisable spec."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class StageCache:
    """Stage artifacts under ``root/<kind>-<key>/``, with the spec they were built from."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, kind: str, spec: dict) -> Path:
        return self.root / f"{kind}-{content_key(spec)}"

    def get_or_build(self, kind: str, spec: dict, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """The folder for ``spec`` and whether it was reused rather than built now."""

        def build_with_spec(tmp: Path) -> None:
            build(tmp)
            (tmp / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))

        final = self.path(kind, spec)
        built = build_once(final, build_with_spec)
        return final, not built
