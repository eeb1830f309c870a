"""The offline default on real zoo models (smaller than `make run`, same code path)."""

import json
import logging
from pathlib import Path

import pytest

from w2s_lightning import pipeline


def test_quickstart_composes_to_the_offline_default(make_cfg):
    cfg = make_cfg("experiment=quickstart")
    assert (cfg.task.name, cfg.weak.name, cfg.strong.name, cfg.loss.name) == ("sst2", "minilm_l3", "mpnet_base", "xent")
    assert cfg.task.n_test >= 1000 and cfg.weak.path == "zoo:minilm_l3"


@pytest.mark.slow
def test_quickstart_runs_on_real_zoo_models(make_cfg, caplog):
    caplog.set_level(logging.INFO, logger="w2s_lightning")
    cfg = make_cfg("experiment=quickstart", "task.n_train=128", "task.n_val=32", "task.n_test=100")
    results = pipeline.run(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert saved["stages"] == results["stages"] and saved["n_test"] == 100
    stages = results["stages"]
    # Pretrained sentence encoders fine-tuned on 64 SST-2 sentences: well above chance.
    assert stages["ceiling"]["acc"] > 0.65 and stages["weak"]["acc"] > 0.55
    printed = caplog.text  # the summary is logged: the console and the run folder's run.log both get it
    assert "sst2: minilm_l3 -> mpnet_base" in printed and "PGR" in printed
