"""Content-addressed artifacts: a folder per key, built once, atomically, under a lock.

A folder becomes visible under its final name only once it is complete: built in a temporary
sibling, every file and the folder fsynced, then renamed. A crash or a kill mid-build leaves at
most a ``.tmp-<name>-*`` folder that nothing reads, and the next build of that name, holding
its lock, removes it. A file lock per key makes a second process that asks for the same key
wait, then reuse what the first one built; a lock dies with its holder, so a killed builder
blocks no one. Each folder's ``manifest.json`` records every file's size and sha256. Reading
an entry checks the sizes, and the hashes of files up to ``HASHED_UP_TO`` bytes (predictions,
metrics, specs; model weights of a generative stage or the zoo are checked by size). An
entry that fails is moved aside with a warning and built again: it is never used.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock

from w2s_lightning import faults
from w2s_lightning.errors import CacheError

log = logging.getLogger(__name__)


MANIFEST = "manifest.json"
HASHED_UP_TO = 64 * 2**20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def seal(folder: Path) -> None:
    """Write ``folder``'s manifest, then fsync every file and the folders: after the rename
    that publishes it, a power cut cannot leave a published entry with missing bytes."""
    manifest = {
        str(p.relative_to(folder)): {
            "size": p.stat().st_size,
            **({"sha256": sha256(p)} if p.stat().st_size <= HASHED_UP_TO else {}),
        }
        for p in files_of(folder)
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    for path in [*files_of(folder), folder / MANIFEST]:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    for sub in sorted({p.parent for p in files_of(folder)} | {folder}, key=lambda d: -len(d.parts)):
        fsync_folder(sub)


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def damage(folder: Path) -> str | None:
    """What is wrong with a published entry, or None when its files match its manifest. An
    entry from before manifests existed has none, and is trusted as it is."""
    manifest_file = folder / MANIFEST
    if not manifest_file.exists():
        return None
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as err:
        return f"its manifest is unreadable ({err})"
    for name, expected in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, {expected['size']} were written"
        if "sha256" in expected and sha256(path) != expected["sha256"]:
            return f"{name} does not match its sha256"
    return None


def usable(final: Path) -> bool:
    """Whether ``final`` exists and is whole. A damaged entry is moved aside (kept, for a look)
    with a warning, so that it is built again; called under the entry's lock."""
    if not final.exists():
        return False
    problem = damage(final)
    if problem is None:
        return True
    aside = final.with_name(f".damaged-{final.name}-{int(time.time())}")
    os.rename(final, aside)
    log.warning("cache entry %s is damaged (%s): moved to %s and built again", final, problem, aside)
    return False


def remove_stale_builds(final: Path) -> None:
    """Temporary folders of ``final`` left by builds that were killed: none can be running, since
    this process holds the lock."""
    for stale in final.parent.glob(f".tmp-{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def write_atomically(path: Path, text: str) -> None:
    """Write ``path`` so that a reader sees the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Ranks(Protocol):
    """The processes that build one entry together (``parallel``): rank 0 decides and publishes."""

    def rank(self) -> int: ...
    def leaders_answer(self, answer: bool) -> bool: ...
    def barrier(self) -> None: ...


def build_once(final: Path, build: Callable[[Path], None], ranks: Ranks | None = None) -> bool:
    """Make sure ``final`` exists, calling ``build(tmp_dir)`` if it does not.

    Returns True when this call built it, False when it was already there. ``ranks``: the
    build is one stage spread over the experiment's ranks, whose rank 0 decides and publishes
    while the others follow. Without them (a zoo model) any process may build it, the others
    wait on the lock."""
    if ranks is not None and ranks.rank() != 0:
        return follow(final, build, ranks)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{final}.lock"):
        remove_stale_builds(final)  # before the other ranks hear the answer and make their scratch folders
        exists = usable(final)
        if ranks.leaders_answer(exists) if ranks is not None else exists:
            return False
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
        try:
            build(tmp)
            seal(tmp)
            faults.reached("publish")
            os.rename(tmp, final)
            fsync_folder(final.parent)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CacheError(
                    f"no space left on the device of {final.parent} while writing {final.name} "
                    f"({err}); nothing was published. Free space there, or point paths.cache_dir "
                    "(W2S_CACHE_DIR) at a larger disk, and rerun: finished stages are kept."
                ) from err
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if ranks is not None:
        ranks.barrier()  # the other ranks read ``final`` once it is there
    return True


def follow(final: Path, build: Callable[[Path], None], ranks: Ranks) -> bool:
    """A rank > 0: build beside rank 0 (its part of every collective) into a scratch folder
    that is never published, then wait for rank 0's entry. It takes no lock: rank 0 holds it."""
    if ranks.leaders_answer(False):
        return False
    scratch = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-rank{ranks.rank()}-"))
    try:
        build(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ranks.barrier()
    if not final.exists():
        raise RuntimeError(f"rank 0 did not publish {final}; its error is printed above.")
    return True


def canonical(value: Any) -> Any:
    """``value`` as keys and the report compare it: a float that is a whole number as an int
    (``0.0`` as ``0``, ``1e3`` as ``1000``), so one setting written two ways is one setting;
    dicts and lists element by element."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def content_key(spec: Any) -> str:
    """A short, stable hash of a JSON-serialisable spec."""
    text = json.dumps(canonical(spec), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class StageCache:
    """Stage artifacts under ``root/<kind>-<key>/``, with the spec they were built from."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, kind: str, spec: dict) -> Path:
        return self.root / f"{kind}-{content_key(spec)}"

    def resume_folder(self, kind: str, spec: dict) -> Path:
        """Where a build of this entry keeps its in-progress checkpoints (``resume.py``)."""
        return self.root / ".resume" / self.path(kind, spec).name

    def get_or_build(
        self, kind: str, spec: dict, build: Callable[[Path], None], ranks: Ranks | None = None
    ) -> tuple[Path, bool]:
        """The folder for ``spec`` and whether it was reused rather than built now."""

        def build_with_spec(tmp: Path) -> None:
            build(tmp)
            (tmp / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))

        final = self.path(kind, spec)
        built = build_once(final, build_with_spec, ranks)
        return final, not built
