"""Run one weak-to-strong experiment (or a Hydra multirun of them).

    python run.py                                   # experiment=quickstart, offline
    python run.py task=sciq model@strong=smollm2_135m loss=aux_conf
    python run.py -m task=sciq,boolq loss=xent,aux_conf
"""

import sys

import hydra
from omegaconf import DictConfig

import w2s_lightning.config  # noqa: F401  (registers the resolvers conf/ uses)
from w2s_lightning import pipeline
from w2s_lightning.errors import W2SError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        pipeline.run(cfg)
    except W2SError as err:
        # A clear one-line error instead of a traceback: it names the problem and the fix.
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
