import multiprocessing
import time
from pathlib import Path

import pytest

from w2s_lightning.cache import StageCache, build_once, content_key


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


def _slow_build(root: str, log: str) -> None:
    def build(out: Path) -> None:
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(1.0)  # long enough for the other process to arrive and wait on the lock
        (out / "weights").write_text("w")

    build_once(Path(root) / "shared-key", build)


def test_two_processes_asking_for_one_key_build_it_once(tmp_path):
    log = tmp_path / "log.txt"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_slow_build, args=(str(tmp_path / "cache"), str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert log.read_text() == "built\n"
    assert (tmp_path / "cache" / "shared-key" / "weights").read_text() == "w"


def test_content_key_is_order_independent_and_sensitive():
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})


def test_stage_cache_writes_the_spec(tmp_path):
    cache = StageCache(tmp_path)
    folder, reused = cache.get_or_build("gt", {"x": 1}, lambda out: (out / "m.json").write_text("{}"))
    assert not reused and (folder / "spec.json").exists() and folder.name.startswith("gt-")
    assert cache.get_or_build("gt", {"x": 1}, lambda out: None) == (folder, True)
