"""Models: the interface every family implements (`interface`), T5 v1.1 and the decoder-only
family (configuration, Flax modules, checkpoint converters), and the family registry."""

from th_distill.models.config import (
  DECODER_START_ID,
  REMAT,
  SIZES,
  T5Config,
  t5_config,
)
from th_distill.models.decoder import Decoder
from th_distill.models.decoder_config import DECODER_SIZES, DecoderConfig, decoder_config
from th_distill.models.families import (
  FAMILIES,
  MODULES,
  fields_of,
  model_config_of,
  module_of,
  register_family,
)
from th_distill.models.interface import LanguageModel, ModelConfig
from th_distill.models.layers import LAYERS_AXIS, extend_cache, param_count
from th_distill.models.t5 import (
  T5,
  init_params,
  shift_right,
  stack_layers,
  unstack_layers,
)
from th_distill.models.tokens import T5_TOKENS, SpecialTokens

__all__ = [
  "SpecialTokens",
  "T5_TOKENS",
  "DECODER_SIZES",
  "DECODER_START_ID",
  "FAMILIES",
  "MODULES",
  "Decoder",
  "DecoderConfig",
  "LanguageModel",
  "ModelConfig",
  "decoder_config",
  "fields_of",
  "model_config_of",
  "module_of",
  "register_family",
  "LAYERS_AXIS",
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
