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

from w2s_lightning import parallel

log = logging.getLogger(__name__)


def build_once(final: Path, build: Callable[[Path], None], by_ranks: bool = False) -> bool:
    """Make sure ``final`` exists, calling ``build(tmp_dir)`` if it does not.

    Returns True when this call built it, False when it was already there. ``by_ranks``: the
    build is one stage spread over the experiment's ranks (``parallel``), whose rank 0 decides
    and publishes while the others follow. Otherwise (a zoo model) any process may build it,
    the others wait on the lock."""
    if by_ranks and not parallel.is_leader():
        return follow(final, build)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{final}.lock"):
        exists = final.exists()
        if parallel.leaders_answer(exists) if by_ranks else exists:
            return False
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
        try:
            build(tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if by_ranks:
        parallel.barrier()  # the other ranks read ``final`` once it is there
    return True


def follow(final: Path, build: Callable[[Path], None]) -> bool:
    """A rank > 0: build beside rank 0 (its part of every collective) into a scratch folder
    that is never published, then wait for rank 0's entry. It takes no lock: rank 0 holds it."""
    if parallel.leaders_answer(False):
        return False
    scratch = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-rank{parallel.rank()}-"))
    try:
        build(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    parallel.barrier()
    if not final.exists():
        raise RuntimeError(f"rank 0 did not publish {final}; its error is printed above.")
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
        built = build_once(final, build_with_spec, by_ranks=True)
        return final, not built
