"""What the command lines share: quiet library logs, distributed start-up, one-line errors.

`main(body)` runs a command like `absl.app.run(body)`, except that a user error (a bad flag, an
unknown `--config.KEY`, a config file without `get_config`, an invalid value, a busy workdir)
prints one line on stderr, `error: <what and how to fix it>`, instead of a traceback, and exits
with the status of `th_distill.errors`: 1 the run cannot go on as asked, 2 a usage error, 75
(EX_TEMPFAIL) pre-empted, run the same command again, 130 Ctrl-C (from the moment `main` starts:
while a config file loads too). `--traceback` adds the traceback before the same line and the
same exit status. `config_flag` defines `--config`: each config file runs once per command.
"""

from __future__ import annotations

import logging as py_logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from th_distill import config as config_lib
from th_distill import errors, partitioning
from th_distill.rundir import preemption

EX_INTERRUPTED = 130  # as a shell reports a process stopped by SIGINT
_TRACEBACK = flags.DEFINE_bool(
  "traceback", False, "On an error, show the Python traceback instead of one line."
)


class QuietLibraries(py_logging.Filter):
  """Drops the INFO chatter of Orbax (one block per checkpoint) and of JAX's backend probing
  ('Unable to initialize backend tpu') from the progress log, and the logged tracebacks of Orbax
  and of asyncio (its 'Task exception was never retrieved' of Orbax's writes) after a failed
  save, which reaches the command as an exception and its one line, unless `tracebacks`."""

  def __init__(self, tracebacks: bool = False):
    super().__init__()
    self.tracebacks = tracebacks

  def filter(self, record: py_logging.LogRecord) -> bool:
    library = any(name in record.pathname for name in ("orbax", "xla_bridge", "asyncio"))
    if library and record.exc_info and not self.tracebacks:
      return False
    return record.levelno >= py_logging.WARNING or not library


def _closed_loop(error: BaseException | None) -> bool:
  return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _quiet_closed_loops(hook: Callable) -> Callable:
  """`sys.unraisablehook` without the 'Event loop is closed' RuntimeErrors that TensorStore's
  callbacks report (dozens, with tracebacks) when Orbax's writes are cut short by a failed save
  (a full disk): the save's own error reaches the command, which reports it in one line."""

  def unraisablehook(unraisable):
    if not _closed_loop(unraisable.exc_value):
      hook(unraisable)

  return unraisablehook


def _fail(message: str, exit_code: int, with_traceback: bool = False) -> NoReturn:
  """Prints `error: <message>` (after the traceback of the error being handled, if
  `with_traceback`: `--traceback` adds it and changes nothing else) and exits with `exit_code`."""
  if with_traceback:
    traceback.print_exc()
  print(f"error: {message}", file=sys.stderr)
  sys.exit(exit_code)


def _traceback_asked(argv: Sequence[str] | None = None) -> bool:
  """Whether `--traceback` was given (read from `argv`, default sys.argv, before the flags are
  parsed)."""
  if flags.FLAGS.is_parsed():
    return _TRACEBACK.value
  return any(
    arg in ("--traceback", "--traceback=true", "--traceback=True") for arg in argv or sys.argv
  )


def _interrupted() -> NoReturn:
  _fail(
    "interrupted (Ctrl-C); run the same command again to resume",
    EX_INTERRUPTED,
    _traceback_asked(),
  )


def _flag_value(argv: Sequence[str], name: str) -> str | None:
  """The last value given to `--name` in `argv` (`--name=V` or `--name V`), or None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _config_key(arg: str) -> str | None:
  """The KEY of a `--config.KEY[=V]` (or boolean `--noconfig.KEY`) argument, else None."""
  for prefix in ("--config.", "--noconfig."):
    if arg.startswith(prefix):
      return arg[len(prefix) :].split("=", 1)[0]
  return None


def last_wins(argv: Sequence[str]) -> list[str]:
  """`argv` with only the last of each repeated `--config.KEY` flag (`--config.KEY=V` or
  `--config.KEY V`), so that every key is last-wins: ml_collections would join the values of a
  repeated tuple field (`--config.regimes`) into one tuple."""
  groups: list[tuple[str | None, list[str]]] = []
  i = 0
  while i < len(argv):
    key = _config_key(argv[i])
    separate = key is not None and "=" not in argv[i] and argv[i].startswith("--config.")
    width = 2 if separate and i + 1 < len(argv) and not argv[i + 1].startswith("--") else 1
    groups.append((key, list(argv[i : i + width])))
    i += width
  last = {key: index for index, (key, _) in enumerate(groups) if key is not None}
  return [
    arg
    for index, (key, args) in enumerate(groups)
    if key is None or last[key] == index
    for arg in args
  ]


def check_config_arguments(argv: Sequence[str], kind: str = "experiment") -> None:
  """Raises ConfigError (naming the file) if `--config` names no loadable config file, or one
  that is not a complete `kind` config ('experiment' or 'study': `config.check_config_file`), or
  a `--config.KEY` override names no field of it (with the nearest field as a suggestion)."""
  path = _flag_value(argv, "config")
  if path is None:  # absent: the flag parser says so
    return
  config = config_lib.load_config_file(path)
  config_lib.check_config_file(config, path, kind)
  _LOADED[path] = config  # the --config flag takes it: each config file runs once per command
  fields = config_lib.dotted_keys(config)
  prefixes = {key.rsplit(".", i)[0] for key in fields for i in range(key.count(".") + 1)}
  for arg in argv:
    key = _config_key(arg)
    if key is not None and key not in prefixes:
      raise config_lib.ConfigError(
        f"--config.{key}: no such field in {path}{config_lib.suggest(key, fields)}"
      )


# Config files loaded by `check_config_arguments`, by path, for the --config flag's parser.
_LOADED: dict[str, ml_collections.ConfigDict] = {}


class _LoadedConfig(flags.ArgumentParser):
  """The parser of `config_flag`: the config `check_config_arguments` loaded for this command
  (a config file runs once), else the file loaded by `config.load_config_file` (its errors name
  the file)."""

  def parse(self, path: str) -> ml_collections.ConfigDict:
    config = _LOADED.pop(path, None)
    if config is None:
      config = config_lib.load_config_file(path)
    if isinstance(config, ml_collections.ConfigDict):
      config.lock()
    return config

  def flag_type(self) -> str:
    return "config object"


def config_flag(help_string: str) -> flags.FlagHolder:
  """Defines `--config` (a config file, with `--config.KEY=V` overrides: ml_collections'
  `DEFINE_config_file`, loaded once per command by `config.load_config_file`). A `--flagfile`
  that cannot be read is a one-line usage error (ml_collections reads flag files here)."""
  try:
    holder = config_flags.DEFINE_config_file("config", None, help_string, lock_config=True)
  except flags.Error as e:
    _fail(str(e).replace("ERROR:: ", "").strip().splitlines()[-1], errors.EX_USAGE)
  flags.FLAGS["config"].parser = _LoadedConfig()
  return holder


def _flag_parser(config_kind: str) -> Callable[[list[str]], list[str]]:
  """absl's flag parsing, every `--config.KEY` last-wins (`last_wins`) and every error as one
  line (exit status 2); the `--config` file must hold a `config_kind` config."""

  def parse(argv: list[str]) -> list[str]:
    argv = [argv[0], *last_wins(argv[1:])]
    try:
      check_config_arguments(argv[1:], config_kind)
      return flags.FLAGS(argv)
    except KeyboardInterrupt:
      _interrupted()
    except Exception as e:  # pylint: disable=broad-except  (any parse error is a usage error)
      text = str(e).strip()
      _fail(
        text.splitlines()[-1] if text else type(e).__name__, errors.EX_USAGE, _traceback_asked(argv)
      )

  return parse


def main(body: Callable[[list[str]], object], config_kind: str = "experiment") -> None:
  """`app.run(body)` with one-line flag errors; `body` should wrap its work in `run_command`;
  `config_kind`: what `--config` takes, 'experiment' or 'study' (`check_config_arguments`)."""
  try:
    app.run(body, flags_parser=_flag_parser(config_kind))
  except KeyboardInterrupt:  # outside `run_command`: while absl starts, for example
    _interrupted()


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
  processes (else SIGTERM is recorded for the whole command: `preemption.record_sigterm`), and a
  `RunError` (a bad config, a busy workdir, pre-emption, a diverged run), a full disk or Ctrl-C as
  one line on stderr and its exit status."""
  for handler in py_logging.getLogger().handlers + py_logging.getLogger("absl").handlers:
    handler.addFilter(QuietLibraries(_TRACEBACK.value))
  if not _TRACEBACK.value:
    sys.unraisablehook = _quiet_closed_loops(sys.unraisablehook)
  try:
    if not partitioning.initialize_distributed():
      preemption.record_sigterm()
    body()
  except KeyboardInterrupt:
    _interrupted()
  except Exception as e:  # pylint: disable=broad-except  (only errors a user can act on)
    error = errors.user_error(e)
    if error is None:
      raise
    _fail(str(error), error.exit_code, _TRACEBACK.value)
