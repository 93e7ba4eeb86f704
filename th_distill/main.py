r"""Command line of the teacher-hacking experiment (the experiment itself: `experiment.run`).

  python -m th_distill.main --config=configs/tiny.py --workdir=/tmp/th [--config.KEY=VALUE ...]
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from th_distill import cli, experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for every output of the run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.run_command(lambda: experiment.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
