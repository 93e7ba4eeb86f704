"""th_distill: teacher hacking in language-model distillation, in JAX/Flax.

Exported here: the T5 model (`T5`, `T5Config`, `t5_config`, `init_params`, `shift_right`), the
decoder-only family (`Decoder`, `DecoderConfig`, `decoder_config`), the jitted KV-cache sampler
(`sample`, `SampleOutput`) and `divergences`. Every public module and its names are listed in
docs/api.md (`th_distill.experiment`, `th_distill.config`, `th_distill.training.steps`,
`th_distill.data.regimes`, ...); the command lines are `python -m` with `th_distill.main`,
`th_distill.study`, `th_distill.detector_eval`, `th_distill.planning.memory` and
`th_distill.planning.plan`. Importing the package loads JAX and Flax only.
"""

import importlib.metadata

from th_distill import divergences
from th_distill.models import (
  T5,
  Decoder,
  DecoderConfig,
  T5Config,
  decoder_config,
  init_params,
  shift_right,
  t5_config,
)
from th_distill.sampling import SampleOutput, sample

try:
  __version__ = importlib.metadata.version("th_distill")  # set once, in setup.py
except importlib.metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, never installed
  __version__ = "0+unknown"

__all__ = [
  "Decoder",
  "DecoderConfig",
  "SampleOutput",
  "T5",
  "T5Config",
  "decoder_config",
  "divergences",
  "init_params",
  "sample",
  "shift_right",
  "t5_config",
]
