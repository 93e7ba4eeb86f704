"""Pretrained weights from a local checkpoint directory: the one loader.

A directory is read by its kind (`checkpoint_type`): a T5X checkpoint by its `checkpoint` file
(`t5x_convert`), else a Hugging Face directory by config.json's `model_type`:

| model_type | read by | family |
|---|---|---|
| `t5` (T5 v1.1 / Flan-T5) | `hf_convert` | `t5` |
| `qwen2` (Qwen2, Qwen2.5), `llama` (Llama 2 / 3 without scaled RoPE) | `hf_decoder` | `decoder` |

Every other type is refused with its `model_type` named (docs/model.md says why: Gemma scales
its embeddings and norms and uses GELU, Mistral / Qwen2-MoE / Mixtral have sliding windows or
experts, Phi has partial rotary embeddings and a parallel block, ...), as is a directory of one
family given where the config holds the other.

- `load_checkpoint(path)` -> `Checkpoint` (config, params, special tokens) of a Hugging Face
  directory, the config read from the directory itself;
- `mismatches(path, cfg)` and `load_params(path, cfg)`: what `oracle.checkpoint`,
  `teacher.checkpoint` and `student.checkpoint` use: the fit of a checkpoint to a run's model config
  (checked in config validation, before any compute), then its weights;
- `special_tokens(path)`: the pad, stop and BOS ids of a checkpoint (`hf_tokens`; a T5X checkpoint
  carries no tokenizer: T5's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

from th_distill.models import hf_convert, hf_decoder, hf_tokens, t5x_convert
from th_distill.models.interface import ModelConfig
from th_distill.models.tokens import T5_TOKENS, SpecialTokens

FAMILY_OF_TYPE = {"t5": "t5", "qwen2": "decoder", "llama": "decoder"}
T5X = "t5x"  # the type of a T5X checkpoint (no config.json)

# Why the model types people ask for most are refused (docs/model.md has the long form).
REFUSED_TYPES = {
  "gemma": "embeddings scaled by sqrt(d_model), norms by 1 + w, GELU MLP",
  "gemma2": "Gemma's differences plus logit soft-capping and sliding-window layers",
  "gemma3": "Gemma's differences plus sliding-window layers and a vision tower",
  "mistral": "sliding-window attention",
  "mixtral": "mixture-of-experts MLP and sliding-window attention",
  "qwen2_moe": "mixture-of-experts MLP",
  "qwen3": "RMS norms on the query and key heads",
  "phi": "partial rotary embeddings, a parallel attention / MLP block, LayerNorm with biases",
  "phi3": "fused projections and scaled (LongRoPE) rotary embeddings",
  "gpt2": "learned absolute positions, LayerNorm, GELU",
  "mt5": "mT5's vocabulary and untied multilingual heads are not converted",
  "umt5": "per-layer relative position biases",
}


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """A loaded checkpoint: the model config it defines (dropout 0), its numpy parameters in our
  layout and the config's `param_dtype`, its special tokens, and its `model_type`."""

  config: ModelConfig
  params: dict[str, Any]
  special_tokens: SpecialTokens
  model_type: str


def _not_a_directory(path: str | os.PathLike) -> FileNotFoundError:
  return FileNotFoundError(
    f"{os.fspath(path)!r} is not a directory: expected a Hugging Face checkpoint directory "
    "(config.json + model.safetensors) of a T5, Qwen2 or Llama model, or a T5X checkpoint "
    "directory (with its `checkpoint` file)."
  )


def checkpoint_type(path: str | os.PathLike) -> str:
  """'t5x' for a T5X checkpoint, else config.json's `model_type` ('t5', 'qwen2' or 'llama');
  FileNotFoundError for a missing directory or config.json, ValueError naming the `model_type`
  of any other model."""
  if not os.path.isdir(path):
    raise _not_a_directory(path)
  if t5x_convert.is_t5x_checkpoint(path):
    return T5X
  model_type = hf_convert.read_config_json(path, "T5, Qwen2 or Llama").get("model_type")
  if model_type in FAMILY_OF_TYPE:
    return model_type
  why = REFUSED_TYPES.get(model_type, "not a model type th_distill converts")
  raise ValueError(
    f"model_type = {model_type!r} in {os.path.join(os.fspath(path), 'config.json')}: "
    f"th_distill reads {', '.join(FAMILY_OF_TYPE)} checkpoints only ({why}; docs/model.md)."
  )


@contextlib.contextmanager
def _naming(path: str | os.PathLike, model_type: str):
  """Re-raises a converter's ValueError with the checkpoint's `model_type` and path in front."""
  try:
    yield
  except ValueError as e:
    if str(e).startswith("model_type"):
      raise
    raise ValueError(f"model_type = {model_type!r} in {os.fspath(path)}: {e}") from e


def _family_check(path: str | os.PathLike, model_type: str, cfg: ModelConfig) -> None:
  family = "t5" if model_type == T5X else FAMILY_OF_TYPE[model_type]
  if family != cfg.family:
    raise ValueError(
      f"model_type = {model_type!r} in {os.fspath(path)} is a {family!r}-family checkpoint, "
      f"but the model config is family {cfg.family!r}: set the model's family to {family!r} "
      "or point at a checkpoint of its family."
    )


def mismatches(path: str | os.PathLike, cfg: ModelConfig) -> list[str]:
  """What keeps the checkpoint at `path` from filling a `cfg` model, without reading weights:
  'model.FIELD: ...' for a Hugging Face config field, 'checkpoint: NAME: ...' for a T5X
  parameter. Raises FileNotFoundError / ValueError (naming the `model_type`) for a checkpoint
  that is unreadable or of another family."""
  model_type = checkpoint_type(path)
  _family_check(path, model_type, cfg)
  if model_type == T5X:
    return [f"checkpoint: {p}" for p in t5x_convert.t5x_mismatches(path, cfg)]
  converter = hf_convert if model_type == "t5" else hf_decoder
  with _naming(path, model_type):
    return [f"model.{p}" for p in converter.architecture_mismatches(path, cfg)]


def load_params(path: str | os.PathLike, cfg: ModelConfig) -> dict[str, Any]:
  """Numpy parameters of a `cfg` model in `cfg.param_dtype`, in its layout (layers stacked if
  `cfg.scan_layers`); ValueError naming the `model_type`, the config field or the parameter
  that does not fit (every ValueError names the `model_type`)."""
  model_type = checkpoint_type(path)
  _family_check(path, model_type, cfg)
  with _naming(path, model_type):
    if model_type == T5X:
      return t5x_convert.load_t5x_params(path, cfg)
    converter = hf_convert if model_type == "t5" else hf_decoder
    return converter.load_hf_params(path, cfg)


def special_tokens(path: str | os.PathLike) -> SpecialTokens:
  """The pad, stop and BOS ids of the checkpoint at `path`, from its files
  (`hf_tokens.special_tokens`); a T5X checkpoint, which has none, uses T5's (pad 0, EOS 1)."""
  return T5_TOKENS if checkpoint_type(path) == T5X else hf_tokens.special_tokens(path)


def read_config(path: str | os.PathLike) -> ModelConfig:
  """The model config (dropout 0) that the Hugging Face checkpoint at `path` (T5, Qwen2 or
  Llama) defines, from its config.json alone; a T5X checkpoint, which defines none, is refused
  (read it with `load_params(path, cfg)` for a T5Config cfg). Every ValueError names the
  `model_type`."""
  model_type = checkpoint_type(path)
  if model_type == T5X:
    raise ValueError(
      f"{os.fspath(path)} is a T5X checkpoint, which carries no model config: load it with "
      "pretrained.load_params(path, cfg) for a T5Config cfg."
    )
  converter = hf_convert if model_type == "t5" else hf_decoder
  with _naming(path, model_type):
    return converter.read_hf_config(path)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
  """The Hugging Face checkpoint at `path` (T5, Qwen2 or Llama) with the config it defines
  (`read_config`), its parameters and its special tokens."""
  cfg = read_config(path)
  model_type = checkpoint_type(path)
  converter = hf_convert if model_type == "t5" else hf_decoder
  with _naming(path, model_type):
    params = converter.load_hf_params(path, cfg)
  return Checkpoint(cfg, params, hf_tokens.special_tokens(path), model_type)
