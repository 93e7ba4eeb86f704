"""Transformer pieces shared by T5 (`models/t5.py`) and the decoder-only family
(`models/decoder.py`): RMSNorm, the gated MLP and its activations, the residual stream's
sharding constraint, the KV cache's length, remat policies and the scanned-layer axis.

Shapes: B batch, L length, H heads, K d_kv, E d_model, F d_ff. Every parameter carries logical
axis names, so `th_distill.partitioning` rules shard it without any change here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Cache = dict[str, Any]

NEG_INF = -1e10  # Added to masked attention logits; finite so fully-masked rows stay finite.
# Logical name of the leading axis of scanned (stacked) layer parameters: never sharded.
LAYERS_AXIS = "layers"
# `remat` -> the `jax.checkpoint` policy of each layer (None: save nothing, recompute all).
REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
SELF_KV = ("self_keys", "self_values")  # a layer's self-attention cache entries [B, H, L, K]


def normal(stddev: float):
  return nn.initializers.normal(stddev=stddev)


class RMSNorm(nn.Module):
  """T5 layer norm: x / rms(x) * scale, computed in float32, returned in the compute dtype."""

  cfg: Any  # a T5Config or DecoderConfig: storage_dtype, compute_dtype, layer_norm_eps

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param(
      "scale",
      nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      (x.shape[-1],),
      self.cfg.storage_dtype,
    )
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(
      jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.cfg.layer_norm_eps
    )
    return (x32 * scale.astype(jnp.float32)).astype(self.cfg.compute_dtype)


def heads_major(x: Array) -> Array:
  """[B, L, H, K] keys or values -> the cache layout [B, H, L, K]."""
  return jnp.swapaxes(x, 1, 2)


def gelu_tanh(x: Array) -> Array:
  """GELU, tanh approximation (`gelu_new`): T5 v1.1's and Gemma's MLP activation."""
  return jax.nn.gelu(x, approximate=True)


class GatedMlp(nn.Module):
  """Gated feed-forward: (act(x W0) * (x W1)) Wo; T5 v1.1's with GELU (the default)."""

  cfg: Any  # a T5Config or DecoderConfig: d_model, d_ff, dropout_rate and the dtypes
  activation: Callable[[Array], Array] = gelu_tanh

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    cfg = self.cfg
    dt = cfg.compute_dtype

    def kernel(name, stddev, shape, axes):
      return self.param(
        name, nn.with_logical_partitioning(normal(stddev), axes), shape, cfg.storage_dtype
      ).astype(dt)

    wi_0 = kernel("wi_0", cfg.d_model**-0.5, (cfg.d_model, cfg.d_ff), ("embed", "mlp"))
    wi_1 = kernel("wi_1", cfg.d_model**-0.5, (cfg.d_model, cfg.d_ff), ("embed", "mlp"))
    wo = kernel("wo", cfg.d_ff**-0.5, (cfg.d_ff, cfg.d_model), ("mlp", "embed"))
    h = self.activation(x @ wi_0) * (x @ wi_1)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=not train)
    return h @ wo


def residual_constraint(x: Array) -> Array:
  return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def extend_cache(cache: Cache, max_decode_length: int) -> Cache:
  """`cache` (from `init_cache`, either layout) with room for `max_decode_length` positions: the
  self-attention keys and values zero-padded along the length (axis -2). Unwritten positions are
  masked, so decoding goes on exactly as with a cache allocated at that length from the start."""

  def pad(layer: Cache) -> Cache:
    def one(x: Array) -> Array:
      widths = [(0, 0)] * x.ndim
      widths[-2] = (0, max_decode_length - x.shape[-2])
      return jnp.pad(x, widths)

    return {**layer, **{k: one(layer[k]) for k in SELF_KV}}

  layers = cache["layers"]
  return {**cache, "layers": [pad(x) for x in layers] if isinstance(layers, list) else pad(layers)}


def param_count(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(nn.unbox(params)))
