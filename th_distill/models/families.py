"""Model families: the config class of each `family` name a run's model sub-config can give.

A model sub-config (`config.student.model`, ...) holds the fields of its family's config class
and, for any family but T5, `family = NAME`; without `family` it is a T5 (every config written
before the decoder-only family existed reads as before). `register_family(cls)` adds a family:
`cls` is a frozen, hashable dataclass implementing `th_distill.models.interface.ModelConfig`
(its `module()` a `LanguageModel`), named by its class attribute `family`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from th_distill.models.config import T5Config
from th_distill.models.decoder_config import DecoderConfig
from th_distill.models.interface import ModelConfig

DEFAULT_FAMILY = "t5"
# The family of a model sub-config that stands for its checkpoint's architecture: read from
# `<model>.checkpoint` by `th_distill.config.validate` before anything else reads the config.
CHECKPOINT_FAMILY = "checkpoint"
FAMILIES: dict[str, type] = {"t5": T5Config, "decoder": DecoderConfig}


def register_family(cls: type) -> type:
  """Adds `cls` (a `ModelConfig` dataclass) under `cls.family`; returns it (a decorator). A name
  already taken by another class is a ValueError."""
  name = getattr(cls, "family", None)
  if not isinstance(name, str) or not name:
    raise ValueError(f"{cls.__name__} needs a class attribute `family` (a non-empty str).")
  if not dataclasses.is_dataclass(cls):
    raise ValueError(f"{cls.__name__} must be a (frozen) dataclass.")
  if FAMILIES.get(name, cls) is not cls:
    raise ValueError(f"Model family {name!r} is already {FAMILIES[name].__name__}.")
  FAMILIES[name] = cls
  return cls


def model_config_of(fields: Mapping[str, Any]) -> ModelConfig:
  """The config of a model sub-config: its `family`'s class (T5 without one) from the other
  fields; ValueError for an unknown family, TypeError or ValueError for a bad field."""
  fields = dict(fields)
  family = fields.pop("family", DEFAULT_FAMILY)
  if family == CHECKPOINT_FAMILY:
    raise ValueError(
      "family: 'checkpoint' is the architecture of the model's checkpoint, read by "
      "th_distill.config.validate (not by the checks of the values alone)."
    )
  if family not in FAMILIES:
    raise ValueError(f"family: unknown model family {family!r}; known: {sorted(FAMILIES)}.")
  return FAMILIES[family](**fields)


def fields_of(cfg: ModelConfig) -> dict[str, Any]:
  """The model sub-config of `cfg`: its fields, plus `family` unless it is a T5 (the inverse of
  `model_config_of`)."""
  fields = dataclasses.asdict(cfg)
  return fields if cfg.family == DEFAULT_FAMILY else {"family": cfg.family, **fields}
