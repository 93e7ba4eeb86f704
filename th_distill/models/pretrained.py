"""Pretrained weights for a model of a given config, from a local checkpoint directory: a Hugging
Face T5 v1.1 / Flan-T5 directory (`hf_convert`) or a T5X checkpoint (`t5x_convert`, recognised by
its `checkpoint` file) for a T5, a Hugging Face Qwen2 / Llama directory (`hf_decoder`) for the
decoder-only family. What the pipeline loads for `oracle.checkpoint`, `teacher.checkpoint` and
`student.checkpoint`, and what config validation checks before any compute.
"""

from __future__ import annotations

import os
from typing import Any

from th_distill.models import hf_convert, hf_decoder, t5x_convert
from th_distill.models.interface import ModelConfig


def mismatches(path: str | os.PathLike, cfg: ModelConfig) -> list[str]:
  """What keeps the checkpoint at `path` from filling a `cfg` model, without reading weights:
  'model.FIELD: ...' for a Hugging Face config field, 'checkpoint: NAME: ...' for a T5X
  parameter. Raises FileNotFoundError / ValueError for an unreadable checkpoint."""
  if not os.path.isdir(path):
    raise FileNotFoundError(
      f"{os.fspath(path)!r} is not a directory: expected a Hugging Face T5 "
      "directory (config.json + model.safetensors) or a T5X checkpoint "
      "directory (with its `checkpoint` file)."
    )
  if cfg.family == "decoder":
    return [f"model.{p}" for p in hf_decoder.architecture_mismatches(path, cfg)]
  if t5x_convert.is_t5x_checkpoint(path):
    return [f"checkpoint: {p}" for p in t5x_convert.t5x_mismatches(path, cfg)]
  return [f"model.{p}" for p in hf_convert.architecture_mismatches(path, cfg)]


def load_params(path: str | os.PathLike, cfg: ModelConfig) -> dict[str, Any]:
  """Numpy parameters of a `cfg` model in `cfg.param_dtype`, in its layout (layers stacked if
  `cfg.scan_layers`); ValueError naming the config field or the parameter that does not fit."""
  if cfg.family == "decoder":
    return hf_decoder.load_hf_params(path, cfg)
  if t5x_convert.is_t5x_checkpoint(path):
    return t5x_convert.load_t5x_params(path, cfg)
  return hf_convert.load_hf_params(path, cfg)
