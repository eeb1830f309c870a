import errno
import json
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from w2s_lightning.cache import StageCache, build_once, content_key
from w2s_lightning.errors import CacheError


def test_build_once_builds_then_reuses(tmp_path):
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        (out / "artifact.txt").write_text("done")

    assert build_once(tmp_path / "a", build) is True
    assert build_once(tmp_path / "a", build) is False
    assert len(calls) == 1 and (tmp_path / "a" / "artifact.txt").read_text() == "done"


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def crash(out: Path) -> None:
        (out / "half-written").write_text("x")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        build_once(tmp_path / "a", crash)
    assert [p.name for p in tmp_path.iterdir()] == ["a.lock"]


def _wait_for(path: Path, lines: int) -> None:
    while not path.exists() or len(path.read_text().splitlines()) < lines:
        time.sleep(0.01)


def _build_when_all_arrived(root: str, log: str, arrivals: str, expected: int) -> None:
    """Say we arrived, then ask for the shared key. The one that builds it waits until every
    process has arrived (and so is past its first look at the key), then builds."""
    with open(arrivals, "a") as f:
        f.write(f"{os.getpid()}\n")

    def build(out: Path) -> None:
        with open(log, "a") as f:
            f.write(f"built by {os.getpid()}\n")
        _wait_for(Path(arrivals), expected)
        (out / "weights").write_text("w")

    build_once(Path(root) / "shared-key", build)


def _build_until_killed(root: str, log: str) -> None:
    def build(out: Path) -> None:
        with open(log, "a") as f:
            f.write(f"built by {os.getpid()}\n")
        threading.Event().wait()  # holds the lock until the test kills it

    build_once(Path(root) / "shared-key", build)


def test_four_processes_asking_for_one_key_build_it_once(tmp_path):
    log, arrivals = tmp_path / "log.txt", tmp_path / "arrivals.txt"
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_build_when_all_arrived, args=(str(tmp_path / "cache"), str(log), str(arrivals), 4))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert len(log.read_text().splitlines()) == 1
    assert (tmp_path / "cache" / "shared-key" / "weights").read_text() == "w"


def test_a_lock_holder_killed_mid_build_blocks_no_one(tmp_path):
    log, arrivals = tmp_path / "log.txt", tmp_path / "arrivals.txt"
    ctx = multiprocessing.get_context("spawn")
    holder = ctx.Process(target=_build_until_killed, args=(str(tmp_path / "cache"), str(log)))
    holder.start()
    _wait_for(log, 1)  # it holds the lock and is building
    waiter = ctx.Process(target=_build_when_all_arrived, args=(str(tmp_path / "cache"), str(log), str(arrivals), 1))
    waiter.start()
    _wait_for(arrivals, 1)  # the waiter is at the lock
    holder.kill()  # SIGKILL: its lock goes with it
    waiter.join(60)
    assert waiter.exitcode == 0
    assert len(log.read_text().splitlines()) == 2  # the waiter took over and built it
    assert (tmp_path / "cache" / "shared-key" / "weights").read_text() == "w"
    assert not list((tmp_path / "cache").glob(".tmp-*"))  # the killed build's folder was cleared


def write_weights(out: Path) -> None:
    (out / "predictions.safetensors").write_bytes(bytes(range(256)) * 4)
    (out / "metrics.json").write_text("{}")


@pytest.mark.parametrize("harm", ["flip a byte", "truncate", "delete"])
def test_a_damaged_entry_is_moved_aside_with_a_warning_and_built_again(tmp_path, caplog, harm):
    final = tmp_path / "gt-abc"
    assert build_once(final, write_weights)
    manifest = json.loads((final / "manifest.json").read_text())
    assert set(manifest) == {"predictions.safetensors", "metrics.json"} and manifest["metrics.json"]["size"] == 2
    victim = final / "predictions.safetensors"
    data = bytearray(victim.read_bytes())
    if harm == "flip a byte":
        data[100] ^= 0xFF
        victim.write_bytes(bytes(data))
    elif harm == "truncate":
        victim.write_bytes(bytes(data[:500]))
    else:
        victim.unlink()
    assert build_once(final, write_weights) is True  # built again, not used
    assert "is damaged" in caplog.text and "moved to" in caplog.text
    assert (final / "predictions.safetensors").read_bytes() == bytes(range(256)) * 4
    assert len(list(tmp_path.glob(".damaged-gt-abc-*"))) == 1
    assert build_once(final, write_weights) is False  # now whole: reused


def test_the_next_build_of_a_key_removes_what_killed_builds_left(tmp_path):
    (tmp_path / ".tmp-gt-abc-x1y2").mkdir()
    (tmp_path / ".tmp-gt-abc-x1y2" / "half").write_text("x")
    (tmp_path / ".tmp-gt-other-z").mkdir()  # another key's: not this build's to clear
    assert build_once(tmp_path / "gt-abc", write_weights)
    assert sorted(p.name for p in tmp_path.glob(".tmp-*")) == [".tmp-gt-other-z"]


def test_a_full_disk_while_publishing_says_so_and_publishes_nothing(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)  # the disk fills as the entry is sealed
    with pytest.raises(CacheError, match="no space left on the device .* point paths.cache_dir"):
        build_once(tmp_path / "gt-abc", write_weights)
    assert [p.name for p in tmp_path.iterdir()] == ["gt-abc.lock"]


def test_content_key_is_order_independent_and_sensitive():
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})


def test_stage_cache_writes_the_spec(tmp_path):
    cache = StageCache(tmp_path)
    folder, reused = cache.get_or_build("gt", {"x": 1}, lambda out: (out / "m.json").write_text("{}"))
    assert not reused and (folder / "spec.json").exists() and folder.name.startswith("gt-")
    assert cache.get_or_build("gt", {"x": 1}, lambda out: None) == (folder, True)
