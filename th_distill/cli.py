"""What the command lines share: quiet library logs, distributed start-up, clean exits."""

from __future__ import annotations

import logging as py_logging
from typing import Callable

from absl import app, logging

from th_distill import config as config_lib, partitioning, pipeline


class _QuietLibraries(py_logging.Filter):
  """Drops the INFO chatter of Orbax (one block per checkpoint) from the progress log."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or "orbax" not in record.pathname


def run_command(body: Callable[[], object]) -> None:
  """Runs `body` as a command: quiet Orbax logs, `jax.distributed` when launched on several
  processes, a bad config as a usage error, and pre-emption (SIGTERM) as a clean exit that the
  scheduler may restart with the same command."""
  for handler in py_logging.getLogger().handlers + py_logging.getLogger("absl").handlers:
    handler.addFilter(_QuietLibraries())
  partitioning.initialize_distributed()
  try:
    body()
  except config_lib.ConfigError as e:
    raise app.UsageError(str(e)) from None
  except pipeline.Preempted as e:
    logging.warning("%s", e)
