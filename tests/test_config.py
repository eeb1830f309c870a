"""Every option of every config group composes, and everything in it that names a Python
object instantiates or imports: a broken yaml fails here, not halfway through a sweep.
Composing needs no data and trains nothing."""

import json
from pathlib import Path

import hydra
import psutil
import pytest
import torch
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, ListConfig, OmegaConf

from w2s_lightning import methods, preflight
from w2s_lightning.errors import ConfigError

# What an option needs beside itself to make sense (a bootstrap needs rungs).
COMPANIONS = {
    "method/rungs=minilm_l6": ["method=bootstrap"],
    "method/rungs=mpnet_base": ["method=bootstrap"],
    "method/rungs=gemma3_270m": ["method=bootstrap"],
    # The image task and models go together (preflight refuses an image model on a text task).
    "task=fashion_mnist": ["model@weak=small_cnn", "model@strong=efficientnet_lite0"],
    **{
        f"model@{role}={name}": ["task=fashion_mnist", "model@weak=small_cnn", "model@strong=efficientnet_lite0"]
        for role in ("weak", "strong")
        for name in ("small_cnn", "efficientnet_lite0", "efficientnet_lite1")
    },
}
# Groups chosen through a package (model@weak) or added on top (budget): how to select an option.
SELECTORS = {"model": ["model@weak", "model@strong"], "budget": ["+budget"]}


def options() -> list[str]:
    found = []
    for group_dir in sorted(p for p in Path(CONF_DIR).rglob("*") if p.is_dir()):
        group = group_dir.relative_to(CONF_DIR).as_posix()
        for option in sorted(group_dir.glob("*.yaml")):
            for selector in SELECTORS.get(group, [group]):
                found.append(f"{selector}={option.stem}")
    return found


def targets(node, path="") -> list[tuple[str, DictConfig]]:
    """Every node of ``node`` that has a ``_target_``, with its dotted path."""
    if isinstance(node, DictConfig) and not node._is_none():  # a typed dict at null (task.ranges) holds nothing
        if "_target_" in node:
            return [(path, node)]
        return [found for key in node for found in targets(node._get_node(key), f"{path}.{key}".strip("."))]
    if isinstance(node, ListConfig) and not node._is_none():  # a typed list at null (task.positive_classes)
        return [found for i, item in enumerate(node) for found in targets(item, f"{path}[{i}]")]
    return []


def test_the_option_list_covers_every_group():
    groups = {o.split("=")[0] for o in options()}
    assert {
        "task",
        "model@weak",
        "model@strong",
        "loss",
        "method",
        "select",
        "method/rungs",
        "finetune",
        "train",
        "trainer",
        "logger",
        "paths",
        "experiment",
        "+budget",
        "hydra/launcher",
    } <= groups


@pytest.mark.parametrize("option", options())
def test_every_option_composes_and_instantiates(option):
    group, name = option.split("=")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                option,
                *COMPANIONS.get(option.lstrip("+"), []),
                "paths.output_dir=out",
            ],  # no Hydra run: no run folder
            return_hydra_config=group == "hydra/launcher",
        )
    if group == "hydra/launcher":  # Hydra instantiates launchers itself; its class must import
        assert hydra.utils.get_class(cfg.hydra.launcher._target_)
        return
    OmegaConf.resolve(cfg)  # every interpolation resolves
    needs_gpu = cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available()
    for path, node in targets(cfg):
        if path == "trainer" and needs_gpu:
            continue  # a GPU Trainer cannot be built here; check_config says so below
        # A relabelling rule (method.rule) is called with its labels when its stage is built.
        assert hydra.utils.instantiate(node, _partial_=path == "method.rule") is not None, path
    assert methods.recipe(cfg)  # the method's function imports and yields requests
    refusal = None
    if needs_gpu:
        refusal = "use trainer=cpu here"
    elif cfg.finetune.name == "full" and not fits_in_memory(max(cfg.weak.params, cfg.strong.params)):
        refusal = "finetune=lora"  # the 7B rungs on this machine
    if refusal:
        with pytest.raises(ConfigError, match=refusal):
            preflight.check_config(cfg)
    else:
        preflight.check_config(cfg)


def fits_in_memory(params: float) -> bool:
    return preflight.BYTES_PER_TRAINED_PARAMETER * params <= preflight.MEMORY_HEADROOM * psutil.virtual_memory().total


@pytest.mark.parametrize("finetune", ["full", "lora", "probe"])
def test_full_fine_tuning_that_outgrows_memory_is_refused_up_front(make_cfg, finetune):
    cfg = make_cfg("model@strong=qwen25_coder_15b", f"finetune={finetune}")
    if finetune == "full" and not fits_in_memory(cfg.strong.params):
        with pytest.raises(ConfigError, match=r"qwen25_coder_15b.*about 23.0 GiB per device.*finetune=lora"):
            preflight.check_config(cfg)
    else:  # frozen backbones, or a machine with room for 1.5B parameters and their AdamW state
        preflight.check_config(cfg)


def test_a_model_yaml_holds_only_what_differs_from_the_schema():
    for path in Path(CONF_DIR, "model").glob("*.yaml"):
        model = OmegaConf.load(path)
        assert list(model.defaults) == ["model_schema", "_self_"], path.name
        assert {"name", "path", "family", "params", "pooling", "objective"} <= set(model), path.name


@pytest.mark.parametrize(
    "change,complaint",
    [
        ({"lr": "fast"}, "lr"),  # a value of the wrong type
        ({"learning_rate": 1e-5}, "learning_rate"),  # a key the schema does not know (a typo)
        ({"params": None}, "params"),  # a required value left out
    ],
)
def test_the_model_schema_refuses_a_bad_model_yaml_when_composing(tmp_path, change, complaint):
    (tmp_path / "model").mkdir()
    model = OmegaConf.merge(OmegaConf.load(Path(CONF_DIR, "model", "minilm_l3.yaml")), change)
    (tmp_path / "model" / "broken.yaml").write_text(OmegaConf.to_yaml(model))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"), pytest.raises(Exception, match=complaint):
        compose(config_name="config", overrides=[f"hydra.searchpath=[file://{tmp_path}]", "model@strong=broken"])


def test_no_preset_is_applied_unless_named():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        bare, quickstart = (compose(config_name="config", overrides=o) for o in ([], ["experiment=quickstart"]))
        boolq = compose(config_name="config", overrides=["task=boolq"])
    assert (bare.task.n_train, boolq.task.n_train) == (20000, 20000)  # the task's own, paper-sized splits
    assert quickstart.task.n_train == 2000 and quickstart.train.head_lr == 1e-3
    assert bare.train.head_lr is None and bare.method.name == "direct" and bare.select.name == "last"


@pytest.mark.parametrize(
    "preset,results,screens,half,n_val",
    [
        ("causal_suite", "causal_suite", "layers", 500, 200),
        ("causal_suite_val500", "causal_suite_val500", "layers_val500", 500, 500),
        # HellaSwag's larger halves write into the val500 suite's folder: one report, eight tasks.
        ("causal_suite_hellaswag", "causal_suite_val500", "layers_val500_halves1000", 1000, 500),
    ],
)
def test_the_causal_suite_reads_the_layers_its_screens_chose(preset, results, screens, half, n_val):
    """Every task a causal suite sweeps has a layer per model, and it is the one that
    ``scripts/choose_layer.py`` recorded on that task's splits of the suite's sizes."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        sweep = compose(config_name="config", overrides=[f"experiment={preset}"], return_hydra_config=True)
        assert sweep.hydra.sweep.dir == sweep.report.dir == f"docs/results/{results}"
        for task in sweep.hydra.sweeper.params.task.split(","):
            cfg = compose(config_name="config", overrides=[f"experiment={preset}", f"task={task}"])
            assert (cfg.task.n_train, cfg.task.n_val) == (2 * half, n_val)
            for role in (cfg.weak, cfg.strong):
                screen = json.loads(
                    (Path(CONF_DIR).parent / "docs" / "results" / screens / task / f"{role.name}.json").read_text()
                )
                assert role.hidden_layer == screen["best_layer"], (task, role.name)
                assert screen["rows"]["train_a"] == half and screen["rows"]["val"] == n_val, (task, role.name)
        unscreened = compose(config_name="config", overrides=[f"experiment={preset}", "task=boolq"])
    with pytest.raises(Exception, match="probe_layers.boolq"):
        OmegaConf.resolve(unscreened)
