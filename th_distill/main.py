r"""Command line of the teacher-hacking experiment (the experiment itself: `experiment.run`).

  python -m th_distill.main --config=configs/tiny.py --workdir=/tmp/th [--config.KEY=VALUE ...]
"""

from __future__ import annotations

import logging as py_logging

from absl import app, flags, logging
from ml_collections import config_flags

from th_distill import config as config_lib, experiment, partitioning, pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for every output of the run.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(py_logging.Filter):
  """Drops the INFO chatter of Orbax (one block per checkpoint) from the progress log."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or "orbax" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for handler in py_logging.getLogger().handlers + py_logging.getLogger("absl").handlers:
    handler.addFilter(_QuietLibraries())
  partitioning.initialize_distributed()
  try:
    experiment.run(_CONFIG.value, _WORKDIR.value)
  except config_lib.ConfigError as e:
    raise app.UsageError(str(e)) from None
  except pipeline.Preempted as e:
    logging.warning("%s", e)  # a clean exit: the scheduler may restart the same command


if __name__ == "__main__":
  app.run(main)
