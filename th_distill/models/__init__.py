"""T5 v1.1 models: configuration, Flax module and checkpoint converters."""

from th_distill.models.config import (
  DECODER_START_ID,
  EOS_ID,
  PAD_ID,
  REMAT,
  SIZES,
  T5Config,
  t5_config,
)
from th_distill.models.t5 import (
  LAYERS_AXIS,
  T5,
  extend_cache,
  init_params,
  param_count,
  shift_right,
  stack_layers,
  unstack_layers,
)

__all__ = [
  "DECODER_START_ID",
  "EOS_ID",
  "LAYERS_AXIS",
  "PAD_ID",
  "REMAT",
  "SIZES",
  "T5",
  "T5Config",
  "extend_cache",
  "init_params",
  "param_count",
  "shift_right",
  "stack_layers",
  "t5_config",
  "unstack_layers",
]
