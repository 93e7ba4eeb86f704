"""Model families: the config class and the Flax module class of each `family` name a run's
model sub-config can give.

A model sub-config (`config.student.model`, ...) holds the fields of its family's config class
and, for any family but T5, `family = NAME`; without `family` it is a T5 (every config written
before the decoder-only family existed reads as before). `register_family(config_class,
module_class)` adds a family: `config_class` is a frozen dataclass implementing
`th_distill.models.interface.ModelConfig` (subclass it for its defaults), named by its class
attribute `family`, and `module_class` a Flax module implementing `LanguageModel`, built as
`module_class(config)`. Both are checked at registration, every missing member named at once.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from th_distill.models.config import T5Config
from th_distill.models.decoder import Decoder
from th_distill.models.decoder_config import DecoderConfig
from th_distill.models.interface import DEFAULTS, LanguageModel, ModelConfig
from th_distill.models.t5 import T5

DEFAULT_FAMILY = "t5"
# The family of a model sub-config that stands for its checkpoint's architecture: read from
# `<model>.checkpoint` by `th_distill.config.validate` before anything else reads the config.
CHECKPOINT_FAMILY = "checkpoint"
FAMILIES: dict[str, type] = {"t5": T5Config, "decoder": DecoderConfig}
MODULES: dict[str, type] = {"t5": T5, "decoder": Decoder}


def _members(protocol: type) -> tuple[list[str], list[str]]:
  """(attributes, methods) a protocol of `th_distill.models.interface` declares."""
  attributes = [name for name in protocol.__annotations__ if name != "family"]
  methods = [
    name
    for name, value in vars(protocol).items()
    if callable(value) or isinstance(value, staticmethod)
    if not name.startswith("_") or name == "__call__"
  ]
  return attributes, methods


def _implements(cls: type, method: str, protocol: type) -> bool:
  """Whether `cls` defines `method` (itself or a base other than `object`), a protocol's stub
  not counting unless it is one of the defaults."""
  for owner in cls.__mro__[:-1]:
    if method in vars(owner):
      return callable(getattr(cls, method)) and (owner is not protocol or method in DEFAULTS)
  return False


def missing_members(config_class: type, module_class: type) -> list[str]:
  """What `config_class` lacks of `ModelConfig` and `module_class` of `LanguageModel`
  ('Class.member' each; [] when both are complete)."""
  attributes, methods = _members(ModelConfig)
  fields = {f.name for f in dataclasses.fields(config_class)}
  missing = [a for a in attributes if a not in fields and not hasattr(config_class, a)]
  missing += [f"{m}()" for m in methods if not _implements(config_class, m, ModelConfig)]
  found = [f"{config_class.__name__}.{m}" for m in missing]
  _, methods = _members(LanguageModel)
  found += [
    f"{module_class.__name__}.{m}()"
    for m in methods
    if not _implements(module_class, m, LanguageModel)
  ]
  return found


def register_family(config_class: type, module_class: type) -> None:
  """Adds the family `config_class.family`: its config class and its module class (see the module
  doc). A ValueError names what is wrong with either (every missing protocol member at once);
  registering a name again replaces the family, with a warning (a notebook cell re-run)."""
  name = getattr(config_class, "family", None)
  if not isinstance(name, str) or not name:
    raise ValueError(
      f"{config_class.__name__} needs a class attribute `family` (a non-empty str): "
      "family: ClassVar[str] = 'mine'."
    )
  params = getattr(config_class, "__dataclass_params__", None)
  if params is None or not params.frozen:
    raise ValueError(
      f"{config_class.__name__} must be a frozen dataclass: @dataclasses.dataclass(frozen=True)."
    )
  if not (isinstance(module_class, type) and issubclass(module_class, nn.Module)):
    raise ValueError(f"register_family({name!r}): {module_class!r} is not a flax.linen.Module.")
  missing = missing_members(config_class, module_class)
  if missing:
    raise ValueError(
      f"Model family {name!r} lacks {', '.join(missing)} (the protocols of "
      "th_distill.models.interface; subclass ModelConfig for its defaults)."
    )
  old = FAMILIES.get(name), MODULES.get(name)
  if old[0] is not None and old != (config_class, module_class):
    warnings.warn(
      f"Model family {name!r} registered again: {old[0].__name__} and {old[1].__name__} "
      f"replaced by {config_class.__name__} and {module_class.__name__}.",
      stacklevel=2,
    )
  FAMILIES[name], MODULES[name] = config_class, module_class


def module_of(cfg: ModelConfig) -> LanguageModel:
  """The Flax module of the config `cfg` (its family's module class, built from `cfg`)."""
  if cfg.family not in MODULES:
    raise ValueError(f"family: unknown model family {cfg.family!r}; known: {sorted(MODULES)}.")
  return MODULES[cfg.family](cfg)


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
