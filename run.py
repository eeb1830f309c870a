"""Run one weak-to-strong experiment, a Hydra multirun of them, or the report.

python run.py experiment=quickstart             # the offline default, CPU-sized
python run.py experiment=quickstart task=sciq model@strong=smollm2_135m loss=aux_conf
python run.py -m task=sciq,boolq loss=xent,aux_conf   # each task's own (paper) sizes
python run.py -m experiment=offline_ladder      # every weak < strong pair of a ladder
python run.py command=plan -m task=sciq,boolq   # the jobs, the stages each trains or reuses, and their time
python run.py command=report                    # PGR tables and figures of the newest multirun
"""

import contextlib
import importlib
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import w2s_lightning.config  # noqa: F401  (registers the resolvers conf/ uses)
from w2s_lightning import console
from w2s_lightning.errors import ConfigError, W2SError

# Each command's module, imported when it runs: a report needs neither Lightning nor the runner.
COMMANDS = {"experiment": "w2s_lightning.pipeline", "plan": "w2s_lightning.plan", "report": "w2s_lightning.report"}


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        if cfg.command not in COMMANDS:
            raise ConfigError(f"command={cfg.command} is unknown; use one of: {', '.join(COMMANDS)}.")
        command = importlib.import_module(COMMANDS[cfg.command])
        console.route_third_party_output()  # after the imports: Lightning sets up its loggers when imported
        guard = contextlib.nullcontext()
        if "Joblib" in HydraConfig.get().launcher.get("_target_", ""):  # a local_parallel job: end with the sweep
            from w2s_lightning.parallel import OrphanGuard

            guard = OrphanGuard.guarding()
        with guard:
            command.run(cfg)
    except W2SError as err:
        # A clear one-line error instead of a traceback: it names the problem and the fix.
        print(f"error: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # Hydra marks this job failed, runs the rest of the sweep, then reports the failure.
            raise
        sys.exit(2)


def flags_first(argv: list[str]) -> list[str]:
    """Hydra's parser reads overrides as one run of words, so ``command=plan -m task=a,b`` (a plan
    typed in front of a sweep's command) would be refused: move the sweep flag ahead of them."""
    flags = [a for a in argv[1:] if a in ("-m", "--multirun")]
    return [argv[0], *flags, *(a for a in argv[1:] if a not in flags)]


if __name__ == "__main__":
    sys.argv = flags_first(sys.argv)
    main()
