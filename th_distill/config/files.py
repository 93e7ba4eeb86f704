"""Config files: loading one (`load_config_file`: its `get_config()`, any failure or exit named
with the file) and checking what it returned is a complete config of the kind the command takes
(`check_config_file`: an experiment's `base_config()` fields, or a study's `STUDY_FIELDS`)."""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from th_distill.config.checks import ConfigError, config_kind, missing_fields


def _failure(error: BaseException) -> str:
  """'<type>: <message>' of an error raised while a config file loads; an exit says so."""
  text = f"{type(error).__name__}: {error}"
  if isinstance(error, SystemExit):
    return f"{text} (it exits while it loads, so nothing would run; return the config instead)"
  return text


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file (as `--config=PATH` loads it; `PATH:ARG` calls
  `get_config(ARG)`); ConfigError naming the file if it is missing, fails or exits (SystemExit,
  any status) at import, has no `get_config` or its `get_config()` fails or exits. Ctrl-C
  (KeyboardInterrupt) goes through."""
  file, argument = (path, None) if os.path.isfile(path) or ":" not in path else path.split(":", 1)
  args = () if argument is None else (argument,)
  call = f"get_config({argument!r})" if args else "get_config()"
  if not os.path.isfile(file):
    raise ConfigError(f"--config: no config file at {file!r}")
  spec = importlib.util.spec_from_file_location("th_distill_config_file", file)
  if spec is None or spec.loader is None:
    raise ConfigError(f"--config: {file!r} is not a Python config file")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except KeyboardInterrupt:
    raise
  except BaseException as e:  # pylint: disable=broad-except  (any error or exit in the file)
    raise ConfigError(f"--config: {file!r} fails at import: {_failure(e)}") from e
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"--config: {file!r} defines no get_config() function")
  try:
    return module.get_config(*args)
  except KeyboardInterrupt:
    raise
  except BaseException as e:  # pylint: disable=broad-except
    raise ConfigError(f"--config: {call} of {file!r} fails: {_failure(e)}") from e


# The command that runs each kind of config file.
COMMANDS = {"experiment": "python -m th_distill.main", "study": "python -m th_distill.study"}


def check_config_file(config: object, path: str, kind: str) -> None:
  """Raises ConfigError naming `path` unless its `get_config()` gave `config`, a ConfigDict of
  `kind` ('experiment' or 'study') with every field (`missing_fields`); a config of the other
  kind names the command that takes it."""
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(
      f"--config: get_config() of {path!r} returns a {type(config).__name__}, not an "
      "ml_collections.ConfigDict (start from th_distill.config.base_config(), or "
      "th_distill.study.study_config() for a study)"
    )
  found = config_kind(config)
  if found != kind:
    raise ConfigError(
      f"--config: {path!r} is a{'n' if found == 'experiment' else ''} {found} config; run it "
      f"with {COMMANDS[found]} (this command takes {kind} configs)"
    )
  missing = missing_fields(config, kind)
  if missing:
    raise ConfigError(
      f"--config: the config of {path!r} lacks the field(s) {', '.join(missing)} (start from "
      + (
        "th_distill.config.base_config())"
        if kind == "experiment"
        else "th_distill.study.study_config())"
      )
    )
