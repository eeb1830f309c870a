"""What a run prints: this project's lines, one progress bar per stage and the summary.

Third-party output a researcher cannot act on (Lightning's hardware and tips lines,
transformers' load reports, deprecation warnings, ``datasets`` progress bars) is routed into
Python logging, where ``conf/hydra/job_logging/w2s.yaml`` keeps it out of the console and
writes all of it to the run folder's ``run.log``; W&B's banners go to its own debug logs.
"""

from __future__ import annotations

import logging
import sys

from w2s_lightning import tracking

# hydra and its launcher plugins: a sweep's "Launching jobs" lines.
OWN_LOGGERS = ("w2s_lightning", "__main__", "hydra", "hydra_plugins")


class OwnLinesOnly(logging.Filter):
    """Passes this project's records and any error; the rest is for the log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in OWN_LOGGERS or record.levelno >= logging.ERROR


def route_third_party_output() -> None:
    """Send Lightning's, transformers' and Python's warnings through the root logger (and so
    through the run's handlers), and switch off per-map and per-load progress bars. Call it
    after the command's imports: it quiets the libraries the command imported and imports no
    other (a report needs neither datasets nor transformers, 2 s to import)."""
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    # Each gives itself a console handler on import; let the run's handlers have their records.
    for name in ("datasets", "transformers", "lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.captureWarnings(True)
    tracking.silence()
