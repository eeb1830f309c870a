"""The entry point of a rank that ``parallel.ranks`` starts (ranks 1..N-1 of a multi-device stage):
``python -m w2s_lightning.rank <rank 0's resolved config>`` runs the same experiment. It sits
above the pipeline, so the modules below it never import the pipeline back.
"""

import logging
import sys

from omegaconf import OmegaConf

from w2s_lightning import pipeline
from w2s_lightning.errors import W2SError
from w2s_lightning.parallel import rank


def main(config_file: str) -> None:
    logging.basicConfig(level=logging.WARNING, format=f"[rank {rank()}] %(levelname)s %(name)s: %(message)s")
    try:
        pipeline.run(OmegaConf.load(config_file))
    except W2SError as err:  # rank 0 prints the same error
        print(f"error (rank {rank()}): {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1])
