"""T5X checkpoints -> th_distill parameters, read without t5x.

The T5X checkpoint format: a directory with a msgpack file `checkpoint` holding the train state
({'target': parameters, 'state': optimiser}, or {'optimizer': {'target': ...}}), in which every
large array is replaced by the TensorStore spec of a zarr array stored beside it (a folder named
after the parameter, e.g. `target.encoder.layers_0.attention.query.kernel`). Read with msgpack and
TensorStore (both come with orbax-checkpoint). Orbax-format T5X checkpoints are not read.

Name mapping (t5x's T5 v1.1 network), S in {encoder, decoder}:
  token_embedder/embedding [V, E]                -> token_embedder [V, E]
  decoder/logits_dense/kernel [E, V]             -> logits_kernel [E, V]
  S/relpos_bias/rel_embedding [H, buckets]       -> S_relpos/rel_embedding [H, buckets]
  S/layers_i/<A>/{query,key,value}/kernel [E, H*K] -> S_layers_i/<a>/{query,key,value} [E, H, K]
  S/layers_i/<A>/out/kernel [H*K, E]             -> S_layers_i/<a>/out [H, K, E]
  S/layers_i/pre_<A'>_layer_norm/scale [E]       -> S_layers_i/<a>_norm/scale [E]
  S/layers_i/mlp/{wi_0,wi_1,wo}/kernel           -> S_layers_i/mlp/{wi_0,wi_1,wo}
  S/layers_i/pre_mlp_layer_norm/scale            -> S_layers_i/mlp_norm/scale
  S/S_norm/scale [E]                             -> S_norm/scale
with (A, A', a) = (attention, attention, attention) in the encoder, (self_attention,
self_attention, self_attention) and (encoder_decoder_attention, cross_attention, cross_attention)
in the decoder. Attention kernels may also be stored unflattened ([E, H, K], [H, K, E]). A T5X
checkpoint carries no model config: every shape is checked against the config instead, and a
problem names the T5X parameter. For a `cfg.scan_layers` model the layers are stacked on loading
(`t5.stack_layers`); scanned T5X checkpoints (`S/layers/...`) are not read.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from th_distill.models.config import T5Config
from th_distill.models.hf_convert import our_shapes
from th_distill.models.t5 import stack_layers

_Path = tuple[str, ...]


def is_t5x_checkpoint(path: str | os.PathLike) -> bool:
  return os.path.isfile(os.path.join(os.fspath(path), "checkpoint"))


def _layout(cfg: T5Config) -> dict[str, _Path]:
  """T5X parameter name -> our parameter path, for every parameter of `cfg`."""
  layout = {
    "token_embedder/embedding": ("token_embedder",),
    "decoder/logits_dense/kernel": ("logits_kernel",),
  }
  stacks = (
    ("encoder", cfg.num_encoder_layers, (("attention", "attention", "attention"),)),
    (
      "decoder",
      cfg.num_decoder_layers,
      (
        ("self_attention", "self_attention", "self_attention"),
        ("encoder_decoder_attention", "cross_attention", "cross_attention"),
      ),
    ),
  )
  for stack, num_layers, attentions in stacks:
    layout[f"{stack}/relpos_bias/rel_embedding"] = (f"{stack}_relpos", "rel_embedding")
    layout[f"{stack}/{stack}_norm/scale"] = (f"{stack}_norm", "scale")
    for i in range(num_layers):
      t5x, ours = f"{stack}/layers_{i}", f"{stack}_layers_{i}"
      for block, norm, name in attentions:
        for proj in ("query", "key", "value", "out"):
          layout[f"{t5x}/{block}/{proj}/kernel"] = (ours, name, proj)
        layout[f"{t5x}/pre_{norm}_layer_norm/scale"] = (ours, f"{name}_norm", "scale")
      for proj in ("wi_0", "wi_1", "wo"):
        layout[f"{t5x}/mlp/{proj}/kernel"] = (ours, "mlp", proj)
      layout[f"{t5x}/pre_mlp_layer_norm/scale"] = (ours, "mlp_norm", "scale")
  return layout


def _target(path: str) -> dict[str, Any]:
  """Flat {T5X name: array or TensorStore spec dict} of the parameters in `path`/checkpoint."""
  from flax import serialization

  with open(os.path.join(path, "checkpoint"), "rb") as f:
    state = serialization.msgpack_restore(f.read())
  tree = state["target"] if "target" in state else state["optimizer"]["target"]
  flat: dict[str, Any] = {}

  def walk(node: Any, prefix: str) -> None:
    if isinstance(node, dict) and not {"driver", "kvstore"} <= set(node):
      for key, value in node.items():
        walk(value, f"{prefix}/{key}" if prefix else key)
    else:
      flat[prefix] = node

  walk(tree, "")
  return flat


def _shape(leaf: Any) -> tuple[int, ...]:
  return tuple(leaf["metadata"]["shape"]) if isinstance(leaf, dict) else np.shape(leaf)


def _read(path: str, leaf: Any) -> np.ndarray:
  if not isinstance(leaf, dict):
    return np.asarray(leaf)
  import tensorstore  # a dependency of orbax-checkpoint

  name = os.path.basename(leaf["kvstore"]["path"].rstrip("/"))
  spec = {**leaf, "kvstore": {"driver": "file", "path": os.path.join(path, name)}}
  return np.asarray(tensorstore.open(spec, open=True, read=True).result().read().result())


def t5x_mismatches(path: str | os.PathLike, cfg: T5Config) -> list[str]:
  """Missing, unexpected or mis-shaped T5X parameters for a `cfg` model (no array is read)."""
  flat = _target(os.fspath(path))
  layout, shapes = _layout(cfg), our_shapes(cfg)
  problems = [f"{name}: missing" for name in sorted(set(layout) - set(flat))][:10]
  problems += [f"{name}: unexpected for this config" for name in sorted(set(flat) - set(layout))][
    :10
  ]
  for name in sorted(set(layout) & set(flat)):
    found, ours = _shape(flat[name]), shapes[layout[name]]
    flattened = (
      (ours[0], math.prod(ours[1:]))
      if name.endswith(("query/kernel", "key/kernel", "value/kernel"))
      else ((math.prod(ours[:-1]), ours[-1]) if name.endswith("out/kernel") else ours)
    )
    if found not in (ours, flattened):
      problems.append(f"{name}: shape {found}, expected {flattened}")
  return problems


def load_t5x_params(path: str | os.PathLike, cfg: T5Config) -> dict[str, Any]:
  """Parameters of a `cfg` model (numpy, `cfg.param_dtype`, layers stacked if `cfg.scan_layers`)
  from the T5X checkpoint at `path`. Raises ValueError naming each missing, unexpected or mis-shaped T5X parameter."""
  path = os.fspath(path)
  problems = t5x_mismatches(path, cfg)
  if problems:
    raise ValueError(f"T5X checkpoint {path} does not fit the model config: " + "; ".join(problems))
  flat, shapes = _target(path), our_shapes(cfg)
  params: dict[str, Any] = {}
  for name, ours in _layout(cfg).items():
    node = params
    for key in ours[:-1]:
      node = node.setdefault(key, {})
    node[ours[-1]] = np.array(_read(path, flat[name]).reshape(shapes[ours]), cfg.storage_dtype)
  return stack_layers(params) if cfg.scan_layers else params
