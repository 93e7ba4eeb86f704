"""Hugging Face T5 v1.1 / Flan-T5 checkpoints <-> th_distill parameters.

Only T5 v1.1-style models are supported (gated-GELU MLP, output layer untied from the embedding:
google/t5-v1_1-*, google/flan-t5-*); the original T5 (ReLU MLP, tied and rescaled output layer)
is rejected, and any other `model_type` named. `th_distill.models.pretrained` is the public
loader (`load_checkpoint`, `load_params`); this module is its T5 converter.

Name mapping, S in {encoder, decoder} (a torch `Linear.weight` is [out, in]; ours are [in, ...]):
  shared.weight [V, E]                          -> token_embedder [V, E]
  lm_head.weight [V, E]                         -> logits_kernel [E, V]
  S.block.0.layer.0.SelfAttention.relative_attention_bias.weight [buckets, H]
                                                -> S_relpos/rel_embedding [H, buckets]
  S.block.{i}.layer.{j}.<A>.{q,k,v}.weight [H*K, E] -> S_layers_{i}/<a>/{query,key,value} [E, H, K]
  S.block.{i}.layer.{j}.<A>.o.weight [E, H*K]   -> S_layers_{i}/<a>/out [H, K, E]
  S.block.{i}.layer.{j}.layer_norm.weight [E]   -> S_layers_{i}/<a>_norm/scale [E]
  S.block.{i}.layer.{m}.DenseReluDense.{wi_0,wi_1}.weight [F, E], wo [E, F]
                                                -> S_layers_{i}/mlp/{wi_0,wi_1} [E, F], wo [F, E]
  S.block.{i}.layer.{m}.layer_norm.weight [E]   -> S_layers_{i}/mlp_norm/scale [E]
  S.final_layer_norm.weight [E]                 -> S_norm/scale [E]
where (j, <A>, <a>) is (0, SelfAttention, attention) in the encoder, (0, SelfAttention,
self_attention) and (1, EncDecAttention, cross_attention) in the decoder, and m is the last layer
of the block (1 in the encoder, 2 in the decoder). `encoder.embed_tokens.weight` and
`decoder.embed_tokens.weight` alias `shared.weight`. Everything is read from a local directory:
nothing is ever downloaded. For a `cfg.scan_layers` model the layers are stacked on loading
(`S_layers/...` [L, ...], `t5.stack_layers`) and unstacked on export.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so bf16 safetensors files load)
import numpy as np

from th_distill.models.config import T5Config
from th_distill.models.t5 import T5, init_params, stack_layers, unstack_layers

# HF keys that alias `shared.weight` and carry no parameters of their own.
_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")

_Path = tuple[str, ...]


def config_from_hf(hf_config: Any) -> T5Config:
  """T5Config (dropout 0) from a `transformers.T5Config` or its dict (config.json).

  Raises ValueError naming `model_type` for another model, the field for a T5 that is not
  v1.1-style.
  """
  c = hf_config if isinstance(hf_config, Mapping) else hf_config.to_dict()
  if c.get("model_type", "t5") != "t5":
    raise ValueError(
      f"model_type = {c.get('model_type')!r}: this is not a T5 checkpoint (T5 v1.1 / Flan-T5 "
      "have model_type = 't5'); th_distill.models.pretrained reads each type by its converter."
    )
  if c.get("feed_forward_proj", "relu") != "gated-gelu":
    raise ValueError(
      f"feed_forward_proj = {c.get('feed_forward_proj')!r}: only T5 v1.1-style "
      "'gated-gelu' checkpoints are supported (not the original ReLU T5)."
    )
  # transformers >= 5 always write tie_word_embeddings = True and record the v1.1 convention (own,
  # unscaled output layer) as scale_decoder_outputs = False; older versions write
  # tie_word_embeddings = False.
  if c.get("scale_decoder_outputs", c.get("tie_word_embeddings", True)):
    raise ValueError(
      "tie_word_embeddings = True (or scale_decoder_outputs = True): only T5 "
      "v1.1-style checkpoints with an untied, unscaled output layer are supported."
    )
  return T5Config(
    vocab_size=c["vocab_size"],
    d_model=c["d_model"],
    d_kv=c["d_kv"],
    d_ff=c["d_ff"],
    num_heads=c["num_heads"],
    num_encoder_layers=c["num_layers"],
    num_decoder_layers=c.get("num_decoder_layers") or c["num_layers"],
    relative_attention_num_buckets=c.get("relative_attention_num_buckets", 32),
    relative_attention_max_distance=c.get("relative_attention_max_distance", 128),
    dropout_rate=0.0,
    layer_norm_eps=c.get("layer_norm_epsilon", 1e-6),
  )


def _layout(cfg: T5Config) -> dict[str, tuple[_Path, str]]:
  """HF key -> (our parameter path, transform) for every parameter of `cfg`."""
  layout = {
    "shared.weight": (("token_embedder",), "copy"),
    "lm_head.weight": (("logits_kernel",), "transpose"),
    "encoder.final_layer_norm.weight": (("encoder_norm", "scale"), "copy"),
    "decoder.final_layer_norm.weight": (("decoder_norm", "scale"), "copy"),
  }
  stacks = (
    ("encoder", cfg.num_encoder_layers, ("SelfAttention", "attention")),
    (
      "decoder",
      cfg.num_decoder_layers,
      ("SelfAttention", "self_attention"),
      ("EncDecAttention", "cross_attention"),
    ),
  )
  for stack, num_layers, *attentions in stacks:
    layout[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
      (f"{stack}_relpos", "rel_embedding"),
      "transpose",
    )
    for i in range(num_layers):
      block, ours = f"{stack}.block.{i}.layer", f"{stack}_layers_{i}"
      for j, (hf_name, name) in enumerate(attentions):
        for hf_proj, proj in (("q", "query"), ("k", "key"), ("v", "value")):
          layout[f"{block}.{j}.{hf_name}.{hf_proj}.weight"] = ((ours, name, proj), "qkv")
        layout[f"{block}.{j}.{hf_name}.o.weight"] = ((ours, name, "out"), "out")
        layout[f"{block}.{j}.layer_norm.weight"] = ((ours, f"{name}_norm", "scale"), "copy")
      mlp = len(attentions)
      for proj in ("wi_0", "wi_1", "wo"):
        layout[f"{block}.{mlp}.DenseReluDense.{proj}.weight"] = ((ours, "mlp", proj), "transpose")
      layout[f"{block}.{mlp}.layer_norm.weight"] = ((ours, "mlp_norm", "scale"), "copy")
  return layout


def _hf_shape(shape: tuple[int, ...], transform: str) -> tuple[int, ...]:
  """The HF shape of one of our parameters of `shape`."""
  if transform == "qkv":  # [E, H, K] -> [H*K, E]
    return (shape[1] * shape[2], shape[0])
  if transform == "out":  # [H, K, E] -> [E, H*K]
    return (shape[2], shape[0] * shape[1])
  return shape[::-1] if transform == "transpose" else shape


def _to_ours(value: np.ndarray, transform: str, shape: tuple[int, ...]) -> np.ndarray:
  if transform == "qkv":  # [H*K, E] -> [E, H, K]
    return value.T.reshape(shape)
  if transform == "out":  # [E, H*K] -> [E, H, K] -> [H, K, E]
    return value.reshape(shape[2], shape[0], shape[1]).transpose(1, 2, 0)
  return value.T if transform == "transpose" else value


def _to_hf(value: np.ndarray, transform: str) -> np.ndarray:
  if transform == "qkv":  # [E, H, K] -> [H*K, E]
    return value.reshape(value.shape[0], -1).T
  if transform == "out":  # [H, K, E] -> [E, H*K]
    return value.transpose(2, 0, 1).reshape(value.shape[2], -1)
  return value.T if transform == "transpose" else value


def _numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor (possibly bfloat16, which numpy lacks)
    value = value.detach().cpu().float().numpy()
  return np.asarray(value)


def our_shapes(cfg: T5Config) -> dict[_Path, tuple[int, ...]]:
  """Our parameter path -> shape in the unrolled layout (`encoder_layers_{i}/...`, whatever
  `cfg.scan_layers`), from the model itself (no computation)."""
  model = T5(cfg.replace(scan_layers=False))
  shapes = jax.eval_shape(lambda: nn.unbox(init_params(model, jax.random.PRNGKey(0))))
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return {tuple(p.key for p in path): leaf.shape for path, leaf in flat}


def params_from_hf_state_dict(state_dict: Mapping[str, Any], cfg: T5Config) -> dict[str, Any]:
  """Our nested parameter dict (numpy arrays in `cfg.param_dtype`, layers stacked if
  `cfg.scan_layers`) from an HF T5 v1.1 state dict.

  `state_dict` maps HF names to torch tensors or array-likes. Raises ValueError naming the HF
  key(s) on a missing, unexpected or mis-shaped tensor.
  """
  layout = _layout(cfg)
  missing = sorted(set(layout) - set(state_dict))
  if missing:
    raise ValueError(f"HF state dict lacks {len(missing)} expected key(s): {missing[:10]}.")
  unexpected = sorted(set(state_dict) - set(layout) - set(_ALIASES))
  if unexpected:
    raise ValueError(
      f"HF state dict has {len(unexpected)} unexpected key(s) for this config: {unexpected[:10]}."
    )
  shapes = our_shapes(cfg)
  params: dict[str, Any] = {}
  for hf_key, (path, transform) in layout.items():
    value = _numpy(state_dict[hf_key])
    expected = _hf_shape(shapes[path], transform)
    if value.shape != expected:
      raise ValueError(f"{hf_key}: shape {value.shape}, expected {expected}.")
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = np.array(
      _to_ours(value, transform, shapes[path]), cfg.storage_dtype, order="C"
    )  # a copy: never aliases the source tensors
  return stack_layers(params) if cfg.scan_layers else params


def params_to_hf_state_dict(params: Mapping[str, Any], cfg: T5Config) -> dict[str, np.ndarray]:
  """HF state dict (float32 numpy, aliases included) of our `params` (either layout); exact
  inverse of `params_from_hf_state_dict`.

  Loads with `T5ForConditionalGeneration.load_state_dict(..., strict=True)`. With transformers
  >= 5 a freshly built model ties `lm_head` to `shared`: give it its own parameter first.
  """
  params = unstack_layers(nn.unbox(params))
  state = {}
  for hf_key, (path, transform) in _layout(cfg).items():
    node = params
    for name in path:
      node = node[name]
    state[hf_key] = np.ascontiguousarray(_to_hf(np.asarray(node, np.float32), transform))
  return {**state, **{alias: state["shared.weight"] for alias in _ALIASES}}


def _read_state_dict(path: str) -> dict[str, Any]:
  single = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  torch_bin = os.path.join(path, "pytorch_model.bin")
  if os.path.isfile(single) or os.path.isfile(index):
    from safetensors.numpy import load_file  # optional dependency

    files = [single]
    if not os.path.isfile(single):
      with open(index, encoding="utf-8") as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      files = [os.path.join(path, name) for name in shards]
    state: dict[str, Any] = {}
    for file in files:
      state.update(load_file(file))
    return state
  if os.path.isfile(torch_bin):
    import torch  # optional dependency

    return torch.load(torch_bin, map_location="cpu", weights_only=True)
  raise FileNotFoundError(
    f"No weights in {path}: expected model.safetensors, sharded "
    "model-*.safetensors with model.safetensors.index.json, or "
    "pytorch_model.bin."
  )


def read_config_json(path: str | os.PathLike, family: str) -> dict[str, Any]:
  """config.json of the local HF directory `path`; FileNotFoundError naming the `family`
  ('T5', 'Qwen2 or Llama') and the files expected."""
  config_path = os.path.join(os.fspath(path), "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(
      f"{config_path} not found: expected a local Hugging Face {family} "
      "directory with config.json and model.safetensors (or sharded "
      "safetensors with model.safetensors.index.json, or pytorch_model.bin)."
    )
  with open(config_path, encoding="utf-8") as f:
    return json.load(f)


def read_hf_config(path: str | os.PathLike) -> T5Config:
  """The T5Config of a local HF directory, from its config.json alone (no weights are read)."""
  return config_from_hf(read_config_json(path, "T5"))


# The T5Config fields a checkpoint fixes (dropout and dtypes are the run's choice).
ARCHITECTURE_FIELDS = (
  "vocab_size",
  "d_model",
  "d_kv",
  "d_ff",
  "num_heads",
  "num_encoder_layers",
  "num_decoder_layers",
  "relative_attention_num_buckets",
  "relative_attention_max_distance",
  "layer_norm_eps",
)


def architecture_mismatches(path: str | os.PathLike, cfg: T5Config) -> list[str]:
  """'field: value in cfg, value in the checkpoint' for each architecture field of `cfg` that
  differs from the HF checkpoint at `path` (config.json alone is read)."""
  return field_mismatches(cfg, read_hf_config(path), ARCHITECTURE_FIELDS, path)


def field_mismatches(
  cfg: Any, found: Any, fields: tuple[str, ...], path: str | os.PathLike
) -> list[str]:
  """'field: value in cfg, but value in PATH' for each of `fields` where `cfg` and the
  checkpoint's config `found` differ."""
  return [
    f"{name}: {getattr(cfg, name)}, but {getattr(found, name)} in {os.fspath(path)}"
    for name in fields
    if getattr(cfg, name) != getattr(found, name)
  ]


def load_hf_params(path: str | os.PathLike, cfg: T5Config) -> dict[str, Any]:
  """Parameters of a `cfg` model (numpy, `cfg.param_dtype`) from the HF checkpoint at `path`.

  Raises ValueError naming each T5Config field that differs from the checkpoint's config, or the
  HF key of a missing, unexpected or mis-shaped tensor.
  """
  mismatches = architecture_mismatches(path, cfg)
  if mismatches:
    raise ValueError("The checkpoint does not fit the model config: " + "; ".join(mismatches))
  return params_from_hf_state_dict(_read_state_dict(os.fspath(path)), cfg)
