"""Hugging Face Qwen2 / Llama checkpoints <-> parameters of the decoder-only family.

Qwen2 (and Qwen2.5) is the family converted: it has a public pair of one family at the paper's
teacher/student shape (Qwen2.5-1.5B and -0.5B, `decoder_config('1.5b' | '0.5b')`), and it is
Llama plus biases on the query, key and value projections, so the same mapping reads Llama
checkpoints (`model_type = 'llama'`, no biases) too. Gemma differs in more places (embeddings
scaled by sqrt(E), norms scaled by 1 + w, GELU) and is not read here.

Name mapping (a torch `Linear.weight` is [out, in]; ours are [in, ...]), layer i:
  model.embed_tokens.weight [V, E]                     -> token_embedder [V, E]
  lm_head.weight [V, E] (untied only; tied, it aliases the embedding) -> logits_kernel [E, V]
  model.norm.weight [E]                                -> final_norm/scale [E]
  model.layers.{i}.input_layernorm.weight [E]          -> layers_{i}/attention_norm/scale [E]
  model.layers.{i}.post_attention_layernorm.weight [E] -> layers_{i}/mlp_norm/scale [E]
  model.layers.{i}.self_attn.q_proj.weight [H*K, E]    -> layers_{i}/attention/query [E, H, K]
  model.layers.{i}.self_attn.{k,v}_proj.weight [G*K, E] -> .../attention/{key,value} [E, G, K]
  model.layers.{i}.self_attn.{q,k,v}_proj.bias [H*K]   -> .../attention/{query,key,value}_bias
  model.layers.{i}.self_attn.o_proj.weight [E, H*K]    -> layers_{i}/attention/out [H, K, E]
  model.layers.{i}.mlp.{gate,up}_proj.weight [F, E]    -> layers_{i}/mlp/{wi_0,wi_1} [E, F]
  model.layers.{i}.mlp.down_proj.weight [E, F]         -> layers_{i}/mlp/wo [F, E]
RoPE is the rotate-half convention of both, with `rope_theta` (transformers >= 5 keep it in
`rope_parameters`); scaled RoPE variants, sliding windows and other activations are refused
with a ValueError naming the field. `th_distill.models.pretrained` is the public loader (`load_checkpoint`, `load_params`); this
module is its Qwen2 / Llama converter. Files are read from a local directory (the T5 converter's
`model.safetensors`, sharded safetensors or `pytorch_model.bin`): nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from th_distill.models.decoder import Decoder
from th_distill.models.decoder_config import DecoderConfig
from th_distill.models.hf_convert import (
  _hf_shape,
  _numpy,
  _read_state_dict,
  _to_hf,
  _to_ours,
  field_mismatches,
  read_config_json,
)
from th_distill.models.t5 import init_params

MODEL_TYPES = ("qwen2", "llama")
_LM_HEAD = "lm_head.weight"
_Path = tuple[str, ...]


def _rope_theta(c: Mapping[str, Any]) -> float:
  rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
  kind = rope.get("rope_type", rope.get("type", "default"))
  if kind != "default":
    raise ValueError(f"rope_type = {kind!r}: only the default (unscaled) RoPE is supported.")
  return float(rope.get("rope_theta", c.get("rope_theta", 10000.0)))


def config_from_hf(hf_config: Any) -> DecoderConfig:
  """DecoderConfig (dropout 0) of a `transformers.Qwen2Config` / `LlamaConfig` or its dict
  (config.json); ValueError naming the field of a model this family cannot hold."""
  c = hf_config if isinstance(hf_config, Mapping) else hf_config.to_dict()
  model_type = c.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"model_type = {model_type!r}: expected one of {MODEL_TYPES}.")
  if c.get("hidden_act", "silu") != "silu":
    raise ValueError(f"hidden_act = {c.get('hidden_act')!r}: only 'silu' is supported.")
  if c.get("use_sliding_window") or c.get("mlp_bias"):
    raise ValueError("use_sliding_window and mlp_bias are not supported.")
  heads = c["num_attention_heads"]
  qkv_bias = True if model_type == "qwen2" else bool(c.get("attention_bias", False))
  return DecoderConfig(
    vocab_size=c["vocab_size"],
    d_model=c["hidden_size"],
    num_heads=heads,
    num_kv_heads=c.get("num_key_value_heads") or heads,
    d_kv=c.get("head_dim") or c["hidden_size"] // heads,
    d_ff=c["intermediate_size"],
    num_layers=c["num_hidden_layers"],
    rope_theta=_rope_theta(c),
    layer_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
    tie_embeddings=bool(c.get("tie_word_embeddings", False)),
    qkv_bias=qkv_bias,
    dropout_rate=0.0,
  )


def _layout(cfg: DecoderConfig) -> dict[str, tuple[_Path, str]]:
  """HF key -> (our parameter path, transform) for every parameter of `cfg`."""
  layout = {
    "model.embed_tokens.weight": (("token_embedder",), "copy"),
    "model.norm.weight": (("final_norm", "scale"), "copy"),
  }
  if not cfg.tie_embeddings:
    layout[_LM_HEAD] = (("logits_kernel",), "transpose")
  for i in range(cfg.num_layers):
    hf, ours = f"model.layers.{i}", f"layers_{i}"
    layout[f"{hf}.input_layernorm.weight"] = ((ours, "attention_norm", "scale"), "copy")
    layout[f"{hf}.post_attention_layernorm.weight"] = ((ours, "mlp_norm", "scale"), "copy")
    for proj, name in (("q", "query"), ("k", "key"), ("v", "value")):
      layout[f"{hf}.self_attn.{proj}_proj.weight"] = ((ours, "attention", name), "qkv")
      if cfg.qkv_bias:
        layout[f"{hf}.self_attn.{proj}_proj.bias"] = ((ours, "attention", f"{name}_bias"), "bias")
    layout[f"{hf}.self_attn.o_proj.weight"] = ((ours, "attention", "out"), "out")
    for proj, name in (("gate", "wi_0"), ("up", "wi_1"), ("down", "wo")):
      layout[f"{hf}.mlp.{proj}_proj.weight"] = ((ours, "mlp", name), "transpose")
  return layout


def our_shapes(cfg: DecoderConfig) -> dict[_Path, tuple[int, ...]]:
  """Our parameter path -> shape, from the model itself (no computation)."""
  shapes = jax.eval_shape(lambda: nn.unbox(init_params(Decoder(cfg), jax.random.PRNGKey(0))))
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return {tuple(p.key for p in path): leaf.shape for path, leaf in flat}


def params_from_hf_state_dict(state_dict: Mapping[str, Any], cfg: DecoderConfig) -> dict:
  """Our nested parameter dict (numpy arrays in `cfg.param_dtype`) from a Qwen2 / Llama state
  dict (torch tensors or array-likes); ValueError naming the HF key of a missing, unexpected
  or mis-shaped tensor. A tied model's `lm_head.weight`, if present, is the embedding's alias."""
  layout = _layout(cfg)
  missing = sorted(set(layout) - set(state_dict))
  if missing:
    raise ValueError(f"HF state dict lacks {len(missing)} expected key(s): {missing[:10]}.")
  aliases = {_LM_HEAD} if cfg.tie_embeddings else set()
  unexpected = sorted(set(state_dict) - set(layout) - aliases)
  if unexpected:
    raise ValueError(
      f"HF state dict has {len(unexpected)} unexpected key(s) for this config: {unexpected[:10]}."
    )
  shapes = our_shapes(cfg)
  params: dict[str, Any] = {}
  for hf_key, (path, transform) in layout.items():
    value, shape = _numpy(state_dict[hf_key]), shapes[path]
    expected = (int(np.prod(shape)),) if transform == "bias" else _hf_shape(shape, transform)
    if value.shape != expected:
      raise ValueError(f"{hf_key}: shape {value.shape}, expected {expected}.")
    ours = value.reshape(shape) if transform == "bias" else _to_ours(value, transform, shape)
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = np.array(ours, cfg.storage_dtype, order="C")  # a copy
  return params


def params_to_hf_state_dict(params: Mapping[str, Any], cfg: DecoderConfig) -> dict:
  """HF state dict (float32 numpy) of our `params`: the exact inverse of
  `params_from_hf_state_dict` (a tied model's `lm_head.weight` included as the embedding), for
  `Qwen2ForCausalLM.load_state_dict(..., strict=True)`."""
  params = nn.unbox(params)
  state = {}
  for hf_key, (path, transform) in _layout(cfg).items():
    node = params
    for name in path:
      node = node[name]
    value = np.asarray(node, np.float32)
    value = value.reshape(-1) if transform == "bias" else _to_hf(value, transform)
    state[hf_key] = np.ascontiguousarray(value)
  if cfg.tie_embeddings:
    state[_LM_HEAD] = state["model.embed_tokens.weight"]
  return state


def read_hf_config(path: str | os.PathLike) -> DecoderConfig:
  """The DecoderConfig of a local HF directory, from its config.json alone."""
  return config_from_hf(read_config_json(path, "Qwen2 or Llama"))


# The DecoderConfig fields a checkpoint fixes (dropout, dtypes and remat are the run's choice).
ARCHITECTURE_FIELDS = (
  "vocab_size",
  "d_model",
  "num_heads",
  "num_kv_heads",
  "d_kv",
  "d_ff",
  "num_layers",
  "rope_theta",
  "layer_norm_eps",
  "tie_embeddings",
  "qkv_bias",
  "mlp_activation",
)


def architecture_mismatches(path: str | os.PathLike, cfg: DecoderConfig) -> list[str]:
  """'field: value in cfg, but value in PATH' for each architecture field that differs."""
  return field_mismatches(cfg, read_hf_config(path), ARCHITECTURE_FIELDS, path)


def load_hf_params(path: str | os.PathLike, cfg: DecoderConfig) -> dict[str, Any]:
  """Parameters of a `cfg` model (numpy, `cfg.param_dtype`) from the checkpoint at `path`;
  ValueError naming each architecture field that differs, or a tensor that does not fit."""
  mismatches = architecture_mismatches(path, cfg)
  if mismatches:
    raise ValueError("The checkpoint does not fit the model config: " + "; ".join(mismatches))
  return params_from_hf_state_dict(_read_state_dict(os.fspath(path)), cfg)
