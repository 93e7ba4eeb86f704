"""What the command lines share: quiet library logs, distributed start-up, one-line errors.

`main(body)` runs a command like `absl.app.run(body)`, except that a user error (a bad flag, an
unknown `--config.KEY`, a config file without `get_config`, an invalid value, a busy workdir)
prints one line on stderr, `error: <what and how to fix it>`, instead of a traceback, and exits
with the status of `th_distill.errors`: 1 the run cannot go on as asked, 2 a usage error, 75
(EX_TEMPFAIL) pre-empted, run the same command again. `--traceback` shows the traceback instead.
"""

from __future__ import annotations

import logging as py_logging
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import ml_collections
from absl import app, flags

from th_distill import config as config_lib
from th_distill import errors, partitioning

_TRACEBACK = flags.DEFINE_bool(
  "traceback", False, "On an error, show the Python traceback instead of one line."
)


class QuietLibraries(py_logging.Filter):
  """Drops the INFO chatter of Orbax (one block per checkpoint) and of JAX's backend probing
  ('Unable to initialize backend tpu') from the progress log."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or not any(
      name in record.pathname for name in ("orbax", "xla_bridge")
    )


def _fail(message: str, exit_code: int) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(exit_code)


def _flag_value(argv: Sequence[str], name: str) -> str | None:
  """The last value given to `--name` in `argv` (`--name=V` or `--name V`), or None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def check_config_arguments(argv: Sequence[str]) -> None:
  """Raises ConfigError if `--config` names no loadable config file or a `--config.KEY`
  override names no field of it (with the nearest field as a suggestion)."""
  path = _flag_value(argv, "config")
  if path is None or ":" in path:  # absent (the flag parser says so), or with get_config args
    return
  config = config_lib.load_config_file(path)
  if not isinstance(config, ml_collections.ConfigDict):
    return
  fields = config_lib.dotted_keys(config)
  prefixes = {key.rsplit(".", i)[0] for key in fields for i in range(key.count(".") + 1)}
  for arg in argv:
    if arg.startswith("--config."):
      key = arg[len("--config.") :].split("=", 1)[0]
      if key not in prefixes:
        raise config_lib.ConfigError(
          f"--config.{key}: no such field in {path}{config_lib.suggest(key, fields)}"
        )


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every error as one line (exit status 2)."""
  try:
    check_config_arguments(argv[1:])
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  (any parse error is a usage error)
    if "--traceback" in argv:
      raise
    _fail(str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__, errors.EX_USAGE)


def main(body: Callable[[list[str]], object]) -> None:
  """`app.run(body)` with one-line flag errors; `body` should wrap its work in `run_command`."""
  app.run(body, flags_parser=_parse_flags)


def reject_arguments(argv: Sequence[str]) -> None:
  """Refuses positional arguments (a forgotten `--config=`, for example)."""
  if len(argv) > 1:
    _fail(
      f"unexpected arguments {list(argv[1:])}; every setting is a flag (e.g. "
      "--config=PATH; --helpshort lists them)",
      errors.EX_USAGE,
    )


def run_command(body: Callable[[], object]) -> None:
  """Runs `body` as a command: quiet Orbax logs, `jax.distributed` when launched on several
  processes, and a `RunError` (a bad config, a busy workdir, pre-emption, a diverged run) as one
  line on stderr and its exit status."""
  for handler in py_logging.getLogger().handlers + py_logging.getLogger("absl").handlers:
    handler.addFilter(QuietLibraries())
  partitioning.initialize_distributed()
  try:
    body()
  except errors.RunError as e:
    if _TRACEBACK.value:
      raise
    _fail(str(e), e.exit_code)
