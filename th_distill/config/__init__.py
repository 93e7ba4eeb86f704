"""The experiment's configuration: the defaults, loading a config file, and its checks.

A config file is an `ml_collections.ConfigDict` (`defaults.base_config()` and its variants); it
is checked at the boundary and read once into the typed, frozen `RunConfig` the rest of the
library takes (`validate`, th_distill.config.run_config and .sections); the compiled programs
take the settings it derives (th_distill.config.settings).
"""

from th_distill.config.checks import (
  ConfigError,
  check_environment,
  check_fields,
  dotted_keys,
  resolve_checkpoint_models,
  suggest,
  validate,
)
from th_distill.config.defaults import (
  base_config,
  decoder_model_config,
  model_config,
  overfit_config,
  paper_config,
  strong_teacher_config,
  to_t5_config,
)
from th_distill.config.files import check_config_file, load_config_file
from th_distill.config.run_config import RunConfig
from th_distill.config.sections import ONLINE_PROMPTS

__all__ = [
  "ONLINE_PROMPTS",
  "ConfigError",
  "RunConfig",
  "base_config",
  "decoder_model_config",
  "check_config_file",
  "check_environment",
  "check_fields",
  "dotted_keys",
  "load_config_file",
  "resolve_checkpoint_models",
  "model_config",
  "overfit_config",
  "paper_config",
  "strong_teacher_config",
  "suggest",
  "to_t5_config",
  "validate",
]
