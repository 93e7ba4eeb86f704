"""Hugging Face T5 v1.1 / Flan-T5 checkpoints <-> th_distill parameters.

Only T5 v1.1-style models are supported (gated-GELU MLP, output layer untied from the embedding:
google/t5-v1_1-*, google/flan-t5-*); the original T5 (ReLU MLP, tied output layer) is rejected.

Name mapping (HF torch `Linear.weight` is [out, in]; ours is [in, ...]):
  shared.weight [V, E]                                  -> token_embedder [V, E]
  lm_head.weight [V, E]                                 -> logits_kernel [E, V]
  {enc,dec}oder.block.0.layer.0.SelfAttention.relative_attention_bias.weight [buckets, H]
                                                        -> {enc,dec}oder_relpos/rel_embedding [H, buckets]
  *.SelfAttention / EncDecAttention .{q,k,v}.weight [H*K, E] -> query/key/value [E, H, K]
  *.o.weight [E, H*K]                                   -> out [H, K, E]
  *.DenseReluDense.{wi_0,wi_1}.weight [F, E] / wo [E, F] -> mlp/{wi_0,wi_1} [E, F] / wo [F, E]
  *.layer_norm.weight, {enc,dec}oder.final_layer_norm.weight -> */scale [E]
No network access: checkpoints are read from a local directory.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from th_distill.models.config import T5Config

# HF keys that alias `shared.weight` and carry no parameters of their own.
_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def config_from_hf(hf_config: Any) -> T5Config:
  """T5Config from a `transformers.T5Config` or its dict (config.json)."""
  c = hf_config if isinstance(hf_config, Mapping) else hf_config.to_dict()
  if c.get("feed_forward_proj", "relu") != "gated-gelu":
    raise ValueError(f"feed_forward_proj = {c.get('feed_forward_proj')!r}: only T5 v1.1-style "
                     "'gated-gelu' checkpoints are supported (not the original ReLU T5).")
  # Recent `transformers` always write tie_word_embeddings = True and record the v1.1 convention
  # (no rescaling of the decoder output) as scale_decoder_outputs = False.
  if c.get("scale_decoder_outputs", c.get("tie_word_embeddings", True)):
    raise ValueError("tie_word_embeddings = True (or scale_decoder_outputs = True): only T5 "
                     "v1.1-style checkpoints with an untied, unscaled output layer are supported.")
  return T5Config(vocab_size=c["vocab_size"], d_model=c["d_model"], d_kv=c["d_kv"],
                  d_ff=c["d_ff"], num_heads=c["num_heads"], num_encoder_layers=c["num_layers"],
                  num_decoder_layers=c.get("num_decoder_layers") or c["num_layers"],
                  relative_attention_num_buckets=c.get("relative_attention_num_buckets", 32),
                  relative_attention_max_distance=c.get("relative_attention_max_distance", 128),
                  dropout_rate=0.0, layer_norm_eps=c.get("layer_norm_epsilon", 1e-6))


def _layout(cfg: T5Config) -> dict[str, tuple[tuple[str, ...], str]]:
  """HF key -> (our path, transform name) for every parameter of `cfg`."""
  layout = {"shared.weight": (("token_embedder",), "copy"),
            "lm_head.weight": (("logits_kernel",), "transpose"),
            "encoder.final_layer_norm.weight": (("encoder_norm", "scale"), "copy"),
            "decoder.final_layer_norm.weight": (("decoder_norm", "scale"), "copy")}
  for stack in ("encoder", "decoder"):
    layout[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
        (f"{stack}_relpos", "rel_embedding"), "transpose")
    attentions = ((0, "SelfAttention", "attention" if stack == "encoder" else "self_attention"),)
    if stack == "decoder":
      attentions += ((1, "EncDecAttention", "cross_attention"),)
    layers = cfg.num_encoder_layers if stack == "encoder" else cfg.num_decoder_layers
    mlp_index = len(attentions)
    for i in range(layers):
      block, ours = f"{stack}.block.{i}.layer", f"{stack}_layers_{i}"
      for index, hf_name, name in attentions:
        for hf_proj, our_proj in (("q", "query"), ("k", "key"), ("v", "value")):
          layout[f"{block}.{index}.{hf_name}.{hf_proj}.weight"] = ((ours, name, our_proj), "qkv")
        layout[f"{block}.{index}.{hf_name}.o.weight"] = ((ours, name, "out"), "out")
        layout[f"{block}.{index}.layer_norm.weight"] = ((ours, f"{name}_norm", "scale"), "copy")
      for proj in ("wi_0", "wi_1", "wo"):
        layout[f"{block}.{mlp_index}.DenseReluDense.{proj}.weight"] = (
            (ours, "mlp", proj), "transpose")
      layout[f"{block}.{mlp_index}.layer_norm.weight"] = ((ours, "mlp_norm", "scale"), "copy")
  return layout


def _to_ours(value: np.ndarray, transform: str, cfg: T5Config) -> np.ndarray:
  h, k = cfg.num_heads, cfg.d_kv
  if transform == "copy":
    return value
  if transform == "transpose":
    return value.T
  if transform == "qkv":  # [H*K, E] -> [E, H, K]
    return value.T.reshape(value.shape[1], h, k)
  return value.reshape(value.shape[0], h, k).transpose(1, 2, 0)  # out: [E, H*K] -> [H, K, E]


def _to_hf(value: np.ndarray, transform: str) -> np.ndarray:
  if transform == "copy":
    return value
  if transform == "transpose":
    return value.T
  if transform == "qkv":  # [E, H, K] -> [H*K, E]
    return value.reshape(value.shape[0], -1).T
  return value.transpose(2, 0, 1).reshape(value.shape[2], -1)  # out: [H, K, E] -> [E, H*K]


def _numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value)


def _our_shapes(cfg: T5Config) -> dict[tuple[str, ...], tuple[int, ...]]:
  import flax.linen as nn
  import jax
  from th_distill.models.t5 import T5, init_params
  shapes = jax.eval_shape(lambda: nn.unbox(init_params(T5(cfg), jax.random.PRNGKey(0))))
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return {tuple(p.key for p in path): leaf.shape for path, leaf in flat}


def params_from_hf_state_dict(state_dict: Mapping[str, Any], cfg: T5Config) -> dict[str, Any]:
  """Our nested parameter dict (numpy, `cfg.param_dtype`) from an HF T5 v1.1 state dict."""
  layout = _layout(cfg)
  missing = sorted(set(layout) - set(state_dict))
  if missing:
    raise ValueError(f"HF state dict lacks {len(missing)} expected key(s), e.g. {missing[:5]}.")
  unexpected = sorted(set(state_dict) - set(layout) - set(_ALIASES))
  if unexpected:
    raise ValueError(f"HF state dict has {len(unexpected)} unexpected key(s) for this config, "
                     f"e.g. {unexpected[:5]}.")
  expected_shapes = _our_shapes(cfg)
  dtype = np.dtype(cfg.param_dtype) if cfg.param_dtype != "bfloat16" else None
  params: dict[str, Any] = {}
  for hf_key, (path, transform) in layout.items():
    source = _numpy(state_dict[hf_key])
    expected_hf = _to_hf(np.zeros(expected_shapes[path], np.float32), transform).shape
    if source.shape != expected_hf:
      raise ValueError(f"{hf_key}: shape {source.shape}, expected {expected_hf} for {cfg}.")
    value = _to_ours(source.astype(np.float32), transform, cfg)
    if dtype is None:
      import jax.numpy as jnp
      value = np.asarray(jnp.asarray(value, jnp.bfloat16))
    else:
      value = value.astype(dtype)
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return params


def params_to_hf_state_dict(params: Mapping[str, Any], cfg: T5Config) -> dict[str, np.ndarray]:
  """The inverse of `params_from_hf_state_dict` (float32 numpy arrays, HF names)."""
  state = {}
  for hf_key, (path, transform) in _layout(cfg).items():
    node = params
    for name in path:
      node = node[name]
    state[hf_key] = np.ascontiguousarray(_to_hf(np.asarray(node, np.float32), transform))
  return state


def load_hf_checkpoint(path: str) -> tuple[T5Config, dict[str, Any]]:
  """(config, params) from a local HF directory: config.json plus model.safetensors, sharded
  safetensors with model.safetensors.index.json, or pytorch_model.bin (needs torch)."""
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path} not found: expected a local Hugging Face T5 "
                            "directory with config.json and model.safetensors (or sharded "
                            "safetensors with model.safetensors.index.json, or pytorch_model.bin).")
  with open(config_path, encoding="utf-8") as f:
    cfg = config_from_hf(json.load(f))
  single = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  torch_bin = os.path.join(path, "pytorch_model.bin")
  if os.path.isfile(single) or os.path.isfile(index):
    from safetensors.numpy import load_file
    if os.path.isfile(single):
      files = [single]
    else:
      with open(index, encoding="utf-8") as f:
        files = [os.path.join(path, name) for name in sorted(set(json.load(f)["weight_map"].values()))]
    state: dict[str, Any] = {}
    for file in files:
      state.update(load_file(file))
  elif os.path.isfile(torch_bin):
    import torch
    state = torch.load(torch_bin, map_location="cpu", weights_only=True)
  else:
    raise FileNotFoundError(f"No weights in {path}: expected model.safetensors, "
                            "model.safetensors.index.json (sharded) or pytorch_model.bin.")
  return cfg, params_from_hf_state_dict(state, cfg)
