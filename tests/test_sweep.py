"""Hydra multiruns for real, on tiny models: a ladder sweep, its report, W&B groups, launchers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR, built_once_per_run, read_wandb_run
from hydra import compose, initialize_config_dir

from w2s_lightning import parallel, report
from w2s_lightning.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY_SIZES = [
    "experiment=quickstart",
    "task=sst2",
    "task.n_train=96",
    "task.n_val=16",
    "task.n_test=64",
    "train.batch_size=16",
    "train.epochs=1",
    "trainer.precision=32-true",
]
MODEL_YAML = """defaults:
  - model_schema
  - _self_

name: {name}
path: {path}
family: tiny
params: {params}
pooling: {pooling}
objective: {objective}
minibatch_size: 16
eval_batch_size: 32
max_length: 64
"""


@pytest.fixture(scope="module")
def tiny_ladder_conf(tmp_path_factory, tiny_bert, tiny_llama) -> Path:
    """An extra config folder with three tiny models as a ladder: tiny_a < tiny_b < tiny_c."""
    conf = tmp_path_factory.mktemp("tiny-conf")
    (conf / "model").mkdir()
    for name, path, params, pooling in [
        ("tiny_a", tiny_bert, 1e6, "mean"),
        ("tiny_b", tiny_llama, 2e6, "last"),
        ("tiny_c", tiny_llama, 3e6, "mean"),
    ]:
        objective = "causal_lm" if pooling == "last" else "masked_lm"
        (conf / "model" / f"{name}.yaml").write_text(
            MODEL_YAML.format(name=name, path=path, params=params, pooling=pooling, objective=objective)
        )
    return conf


def run_py(cache: Path, *args: str, wandb_mode: str = "disabled", timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "W2S_CACHE_DIR": str(cache), "WANDB_MODE": wandb_mode, "WANDB_SILENT": "true"}
    result = subprocess.run(
        [sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    return result


def multirun(conf: Path, sweep_dir: Path, cache: Path, *overrides: str, **kwargs) -> subprocess.CompletedProcess:
    return run_py(
        cache,
        "-m",
        f"hydra.searchpath=[file://{conf}]",
        f"hydra.sweep.dir={sweep_dir}",
        *TINY_SIZES,
        *overrides,
        **kwargs,
    )


def job_results(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))]


@pytest.fixture(scope="module")
def ladder_sweep(tmp_path_factory, worker_id, tiny_ladder_conf):
    """One real multirun: 3 models x 3 models x 2 losses, W&B offline."""

    def sweep(root: Path) -> None:
        done = multirun(
            tiny_ladder_conf,
            root / "sweep",
            root / "cache",
            "model@weak=tiny_a,tiny_b,tiny_c",
            "model@strong=tiny_a,tiny_b,tiny_c",
            "loss=xent,aux_conf",
            wandb_mode="offline",
        )
        assert done.returncode == 0, done.stderr[-3000:]
        (root / "sweep.log").write_text(done.stdout + done.stderr)

    root = built_once_per_run(tmp_path_factory, worker_id, "ladder", sweep)
    return root / "sweep", (root / "sweep.log").read_text()


@pytest.mark.slow
def test_ladder_sweep_trains_each_ground_truth_model_once(ladder_sweep):
    sweep_dir, log = ladder_sweep
    assert "Launching 18 jobs locally" in log
    results = job_results(sweep_dir)
    skipped = [json.loads(p.read_text()) for p in sweep_dir.glob("*/skipped.json")]
    # 3 pairs with weak < strong, each under 2 losses; the 3 same-size and 3 weak-larger pairs skipped.
    assert sorted({(r["weak_model"], r["strong_model"]) for r in results}) == [
        ("tiny_a", "tiny_b"),
        ("tiny_a", "tiny_c"),
        ("tiny_b", "tiny_c"),
    ]
    assert len(results) == 6 and len(skipped) == 12
    assert {s["weak_model"] for s in skipped if "larger" in s["skipped"]} == {"tiny_b", "tiny_c"}
    trained = [(role, s["model"]) for r in results for role, s in r["stages"].items() if not s["reused"]]
    ground_truth = sorted(model for role, model in trained if role != "transfer")
    assert ground_truth == ["tiny_a", "tiny_b", "tiny_c"]  # N models: N ground-truth trainings
    assert sum(role == "transfer" for role, _ in trained) == 6  # one per pair and loss
    for model in ("tiny_a", "tiny_b", "tiny_c"):
        assert log.count(f"training {model} on ground truth") == 1
    # The first job planned the sweep, and the plan was what the sweep then trained.
    assert "plan: 18 jobs (12 skipped), 9 stages to train" in log
    assert "job 1/18 done" in log and "job 18/18 done, " in log


@pytest.mark.slow
def test_report_stage_writes_tables_figures_and_logs_them_to_wandb(ladder_sweep, tmp_path):
    sweep_dir, _ = ladder_sweep
    done = run_py(
        tmp_path / "cache",
        "command=report",
        f"report.dir={sweep_dir}",
        f"hydra.run.dir={tmp_path / 'run'}",
        wandb_mode="offline",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = sweep_dir / "report"
    with open(out / "summary.csv") as f:
        summary = {row["loss"]: row for row in csv.DictReader(f)}
    assert set(summary) == {"xent", "aux_conf"}
    for row in summary.values():
        assert row["task"] == "sst2" and int(row["seeds"]) == 1
        # Every pair is used or left out and counted (64 test rows leave most tiny gaps within the noise).
        left_out = int(row["pairs_left_out_ceiling_le_weak"]) + int(row["pairs_left_out_gap_within_noise"])
        assert int(row["pairs_used"]) + left_out == 3
    with open(out / "pairs.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    counts = json.loads((out / "accounting.json").read_text())
    assert counts["ground_truth_stages_trained_here"] == 3 and counts["transfer_stages_trained_here"] == 6
    assert counts["skipped_jobs"] == 12
    for figure in ("sst2_accuracy.png", "pgr.png"):
        assert (out / "figures" / figure).read_bytes()[:4] == b"\x89PNG"
    assert "ground-truth stages: 3 used, 3 trained in this sweep" in done.stdout

    # The report is a job_type=report run in the sweep's W&B group, with its tables and figures.
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    logged = read_wandb_run(run_dir)
    assert logged["job_type"] == "report" and logged["group"] == f"sweep-{sweep_dir.name}"
    assert logged["summary"]["report/summary"]["_type"] == "table-file"
    assert logged["summary"]["report/pgr"]["_type"] == "image-file"
    assert logged["summary"]["transfer_stages_used"] == 6

    # The module entry point writes the same summary without Hydra.
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "w2s_lightning.report",
            str(sweep_dir),
            "--out",
            str(tmp_path / "cli"),
            "--wandb-mode",
            "disabled",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert (tmp_path / "cli" / "summary.csv").read_text() == (out / "summary.csv").read_text()


@pytest.mark.slow
def test_sweep_runs_share_one_wandb_group_with_a_job_type_per_stage(ladder_sweep):
    sweep_dir, _ = ladder_sweep
    runs = []
    for path in sweep_dir.glob("*/results.json"):
        result = json.loads(path.read_text())
        job_runs = [read_wandb_run(d) for d in (path.parent / "wandb").glob("offline-run-*")]
        # A run per stage the job trained (reused stages log nothing new), plus its summary.
        trained = [role for role, stage in result["stages"].items() if not stage["reused"]]
        assert sorted(r["job_type"] for r in job_runs) == sorted([*trained, "summary"])
        assert all(f"pair:{result['weak_model']}->{result['strong_model']}" in r["tags"] for r in job_runs)
        runs += job_runs
    assert {r["group"] for r in runs} == {f"sweep-{sweep_dir.name}"}
    assert {r["job_type"] for r in runs} == {"weak", "ceiling", "transfer", "summary"}


@pytest.mark.slow
def test_paper_figures_notebook_draws_from_a_results_folder(ladder_sweep, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    sweep_dir, _ = ladder_sweep
    notebook = nbformat.read(ROOT / "notebooks" / "paper_figures.ipynb", as_version=4)
    monkeypatch.setenv("W2S_RESULTS", str(sweep_dir))  # the kernel inherits it
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    images = [
        o
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == 2  # the accuracy figure of sst2 and the PGR bars


@pytest.mark.slow
def test_parallel_jobs_share_the_weak_model_through_the_cache_lock(tiny_ladder_conf, tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = multirun(
        tiny_ladder_conf,
        sweep_dir,
        tmp_path / "cache",
        "hydra/launcher=local_parallel",
        "model@weak=tiny_a",
        "model@strong=tiny_b",
        "loss=xent,aux_conf",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in done.stdout + done.stderr
    results = job_results(sweep_dir)
    assert len(results) == 2
    for role in ("weak", "ceiling"):
        # Both jobs asked for the same stage at once: one trained it, the other waited and reused it.
        assert sorted(r["stages"][role]["reused"] for r in results) == [False, True]
        assert results[0]["stages"][role]["key"] == results[1]["stages"][role]["key"]
        assert results[0]["stages"][role]["acc"] == results[1]["stages"][role]["acc"]
    assert not any(r["stages"]["transfer"]["reused"] for r in results)
    stage_dirs = [
        p.name
        for p in (tmp_path / "cache" / "stages").iterdir()
        if not p.name.endswith(".lock") and not p.name.startswith(".")
    ]  # .resume: in-progress checkpoints (none left)
    assert sorted(name.split("-")[0] for name in stage_dirs) == ["gt", "gt", "transfer", "transfer"]


@pytest.mark.slow
def test_a_failed_job_does_not_stop_the_rest_of_the_sweep(tiny_ladder_conf, tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = multirun(
        tiny_ladder_conf,
        sweep_dir,
        tmp_path / "cache",
        "model@weak=tiny_a",
        "model@strong=tiny_b",
        "strong.pooling=max,last",
    )
    assert done.returncode != 0  # the sweep reports the failure at the end
    assert "error: pooling='max' is unknown" in done.stderr
    (result,) = job_results(sweep_dir)  # ... but the job after the failed one ran
    assert result["config"]["strong"]["pooling"] == "last"


def test_paper_nlp_preset_composes_a_gpt2_and_qwen_ladder_on_five_tasks():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=paper_nlp"], return_hydra_config=True)
        params = cfg.hydra.sweeper.params
        models = params["model@weak"].split(",")
        assert params["model@strong"] == params["model@weak"]
        assert [m for m in models if m.startswith("gpt2")] == ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]
        assert [m for m in models if m.startswith("qwen")] == ["qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b"]
        assert params["task"].split(",") == ["sciq", "boolq", "cosmos_qa", "amazon_polarity", "anthropic_hh"]
        assert params["loss"] == "xent,aux_conf"
        assert cfg.train.batch_size == 32 and cfg.train.epochs == 2
        assert cfg.task.n_train == 20000 and cfg.task.n_test == 10000 and cfg.trainer.accelerator == "gpu"
        for model in models:  # every rung is a model config that composes
            assert (
                compose(config_name="config", overrides=["experiment=paper_nlp", f"model@strong={model}"]).strong.name
                == model
            )
        lora = compose(config_name="config", overrides=["experiment=paper_nlp_lora"], return_hydra_config=True)
        lora_models = lora.hydra.sweeper.params["model@weak"].split(",")
        assert lora.finetune.name == "lora" and lora_models == [*models, "qwen2.5-7b"]  # 7B fits one GPU with LoRA
        assert lora.hydra.sweeper.params["task"] == params["task"]
        # The 7B students, fully fine-tuned: sharded over 4 GPUs, 4 Slurm tasks per job.
        big = compose(
            config_name="config",
            overrides=["experiment=paper_nlp_7b", "hydra/launcher=slurm"],
            return_hydra_config=True,
        )
        assert big.hydra.sweeper.params["model@strong"] == "qwen2.5-7b"
        assert big.trainer.devices == 4 and parallel.shards_states(big) and big.trainer.precision == "bf16-mixed"
        assert big.hydra.launcher.tasks_per_node == 4 and big.hydra.launcher.gpus_per_node == 4
        assert big.task == cfg.task and big.train == cfg.train
        ladder = compose(config_name="config", overrides=["experiment=offline_ladder"], return_hydra_config=True)
        assert ladder.hydra.sweeper.params["task"] == "sciq,boolq,sst2"


@pytest.mark.slow
def test_paper_nlp_starts_here_and_stops_where_the_hub_is_needed(tmp_path):
    # conftest sets HF_HUB_OFFLINE=1: CI has no hub, so loading gpt2 must fail fast and clearly.
    done = run_py(tmp_path / "cache", "experiment=paper_nlp", "trainer=cpu", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2
    assert "training" not in done.stdout + done.stderr  # every model's config is read before any stage
    assert "error: model 'gpt2': cannot load 'gpt2'" in done.stderr and "hub ids need the hub" in done.stderr


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_gpu_trainer_without_a_gpu_says_to_use_the_cpu_trainer(tmp_path):
    done = run_py(tmp_path / "cache", "experiment=paper_nlp", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2 and "use trainer=cpu here" in done.stderr


@pytest.mark.slow
def test_submitit_jobs_that_need_one_stage_train_it_once(tiny_ladder_conf, tmp_path):
    """hydra/launcher=submitit_local: submitit's own job processes, as on Slurm, all started at
    once; both jobs need the same weak and ceiling stages."""
    sweep_dir = tmp_path / "sweep"
    done = multirun(
        tiny_ladder_conf,
        sweep_dir,
        tmp_path / "cache",
        "hydra/launcher=submitit_local",
        "hydra.launcher.cpus_per_task=1",
        "model@weak=tiny_a",
        "model@strong=tiny_b",
        "loss=xent,aux_conf",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2  # submitit's own record of each job
    assert all(set(r["stages"]) == {"weak", "ceiling", "transfer"} for r in job_results(sweep_dir))
    report = run_py(tmp_path / "cache", "command=report", f"report.dir={sweep_dir}")
    assert report.returncode == 0, report.stderr[-3000:]
    counts = json.loads((sweep_dir / "report" / "accounting.json").read_text())
    assert counts["experiments"] == 2 and counts["ground_truth_stages_used"] == 2
    assert counts["ground_truth_stages_trained_here"] == 2 and counts["stages_trained_by_several_jobs"] == []
    assert counts["transfer_stages_trained_here"] == 2


@pytest.mark.slow
def test_two_sweeps_on_one_cache_and_a_report_reading_one_as_it_runs(tiny_ladder_conf, tmp_path):
    """Both sweeps need the same weak and ceiling stages; a report reads the first sweep over
    and over while its jobs write their results. No error, no partial read, each stage built once."""
    cache = tmp_path / "cache"
    env = {**os.environ, "W2S_CACHE_DIR": str(cache), "WANDB_MODE": "disabled"}
    sweeps = [tmp_path / "first", tmp_path / "second"]
    running = [
        subprocess.Popen(
            [
                sys.executable,
                "run.py",
                "-m",
                f"hydra.searchpath=[file://{tiny_ladder_conf}]",
                f"hydra.sweep.dir={sweep}",
                *TINY_SIZES,
                "model@weak=tiny_a",
                "model@strong=tiny_b",
                f"loss={losses}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for sweep, losses in zip(sweeps, ("xent,aux_conf", "aux_conf,xent"), strict=True)
    ]
    reads = 0
    while any(p.poll() is None for p in running):
        try:
            built = report.build(*report.read_folder(sweeps[0]), tmp_path / "report")
            reads += 1
            assert built["accounting"]["experiments"] >= 1
        except ConfigError as err:  # before the first job has finished: nothing to report yet
            assert "no results.json" in str(err) or "is not a folder" in str(err), err
        time.sleep(0.2)
    assert [p.wait() for p in running] == [0, 0], [p.stderr.read()[-2000:] for p in running]
    assert reads >= 1
    results = [r for sweep in sweeps for r in job_results(sweep)]
    counts = report.accounting(results, [])
    assert counts["experiments"] == 4 and counts["ground_truth_stages_used"] == 2
    assert counts["stages_trained_by_several_jobs"] == [] and counts["ground_truth_stages_trained_here"] == 2


@pytest.mark.slow
def test_killing_a_local_parallel_sweep_ends_its_workers(tiny_ladder_conf, tmp_path):
    """The sweep's process is SIGKILLed while its joblib workers train: they end too, by the
    guard's SIGTERM (a job saves its progress and its idle worker exits), inside the
    30-second grace before the guard's SIGKILL."""
    import psutil

    args = [
        sys.executable,
        "run.py",
        "-m",
        f"hydra.searchpath=[file://{tiny_ladder_conf}]",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *TINY_SIZES,
        "train.epochs=200",  # long enough to be training when the kill comes
        "hydra/launcher=local_parallel",
        "model@weak=tiny_a",
        "model@strong=tiny_b",
        "loss=xent,aux_conf",
    ]
    env = {**os.environ, "W2S_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    sweep = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(
        ": training " in log.read_text() for log in (tmp_path / "sweep").glob("*/run.log")
    ):
        time.sleep(0.5)  # until a job's stage is training
    workers = psutil.Process(sweep.pid).children(recursive=True)
    assert workers, "the sweep started no worker processes"
    sweep.kill()
    sweep.wait()
    # 25 s: inside the guard's 30-s grace (so SIGTERM ended them), with room for a loaded machine
    # (15 s failed once on 2026-12-03 while the other xdist worker trained beside it).
    gone, alive = psutil.wait_procs(workers, timeout=25)
    assert not alive, f"workers still running after the sweep was killed: {[p.pid for p in alive]}"
