"""T5 v1.1's blocks (`models/t5.py` assembles them): bucketed relative position bias, attention
without biases or logit scaling (with the cached decoding step), the encoder and decoder layers,
and how a stack of layers is rematerialised and scanned.

Shapes: B batch, Li encoder (prompt) length, Lt decoder (target) length, E d_model, H heads,
K d_kv, F d_ff.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from th_distill.models.config import T5Config
from th_distill.models.layers import (
  LAYERS_AXIS,
  NEG_INF,
  REMAT_POLICIES,
  GatedMlp,
  RMSNorm,
  heads_major,
  normal,
  residual_constraint,
)

Array = jax.Array
Cache = dict[str, Any]


def relative_position_bucket(
  relative_position: Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
  """Maps relative positions (key - query) to bucket ids in [0, num_buckets), as in T5.

  Half of the buckets (all of them if not bidirectional) hold exact small distances, the rest
  logarithmically larger ones up to `max_distance`; bidirectional attention splits the buckets
  between keys after and before the query. Unidirectional attention maps future keys to bucket 0.
  """
  ret = jnp.zeros_like(relative_position)
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  safe_n = jnp.maximum(n, 1).astype(jnp.float32)
  val_if_large = max_exact + (
    jnp.log(safe_n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBias(nn.Module):
  """Learned scalar bias per (head, relative-position bucket): returns [1, H, Lq, Lk] float32."""

  cfg: T5Config
  bidirectional: bool

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array) -> Array:
    cfg = self.cfg
    table = self.param(
      "rel_embedding",
      nn.with_logical_partitioning(normal(cfg.d_model**-0.5), ("heads", "relpos_buckets")),
      (cfg.num_heads, cfg.relative_attention_num_buckets),
      cfg.storage_dtype,
    )
    buckets = relative_position_bucket(
      key_positions[None, :] - query_positions[:, None],
      self.bidirectional,
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
    )  # [Lq, Lk]
    return jnp.take(table.astype(jnp.float32), buckets, axis=1)[None]  # [1, H, Lq, Lk]


class Attention(nn.Module):
  """Multi-head dot-product attention without biases or logit scaling (T5)."""

  cfg: T5Config

  def setup(self):
    cfg = self.cfg
    hk = (cfg.num_heads, cfg.d_kv)

    def kernel(name, stddev, shape, axes):
      return self.param(
        name, nn.with_logical_partitioning(normal(stddev), axes), shape, cfg.storage_dtype
      )

    self.query = kernel(
      "query", (cfg.d_model * cfg.d_kv) ** -0.5, (cfg.d_model, *hk), ("embed", "heads", "kv")
    )
    self.key = kernel("key", cfg.d_model**-0.5, (cfg.d_model, *hk), ("embed", "heads", "kv"))
    self.value = kernel("value", cfg.d_model**-0.5, (cfg.d_model, *hk), ("embed", "heads", "kv"))
    self.out = kernel(
      "out", (cfg.num_heads * cfg.d_kv) ** -0.5, (*hk, cfg.d_model), ("heads", "kv", "embed")
    )
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def _proj(self, x: Array, kernel: Array) -> Array:
    dt = self.cfg.compute_dtype
    y = jnp.einsum("ble,ehk->blhk", x.astype(dt), kernel.astype(dt))
    return nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))

  def project_kv(self, x: Array) -> tuple[Array, Array]:
    """Keys and values of `x` [B, L, E]: two [B, L, H, K] arrays."""
    return self._proj(x, self.key), self._proj(x, self.value)

  def __call__(self, x: Array, keys: Array, values: Array, bias: Array, train: bool) -> Array:
    """Attends from `x` [B, Lq, E] to `keys`/`values` [B, Lk, H, K].

    `bias` broadcasts to [B, H, Lq, Lk] (relative positions plus a large negative on masked
    entries). Returns [B, Lq, E] in the compute dtype.
    """
    dt = self.cfg.compute_dtype
    q = self._proj(x, self.query)
    logits = (
      jnp.einsum("bqhk,bshk->bhqs", q, keys.astype(dt), preferred_element_type=jnp.float32) + bias
    )
    weights = jax.nn.softmax(logits, axis=-1)
    weights = self.dropout(weights, deterministic=not train)
    mixed = jnp.einsum("bhqs,bshk->bqhk", weights.astype(dt), values.astype(dt))
    return jnp.einsum("bqhk,hke->bqe", mixed, self.out.astype(dt))

  def attend_cached(self, x: Array, keys: Array, values: Array, bias: Array) -> Array:
    """Incremental decoding (no dropout): attends from one position `x` [B, 1, E] to a cache
    `keys`/`values` [B, H, Lk, K].

    The cache is heads-major so that both products are batched matrix-vector products over its
    own layout (no per-step transpose of the cache). `bias` broadcasts to [B, H, 1, Lk].
    Returns [B, 1, E] in the compute dtype.
    """
    dt = self.cfg.compute_dtype
    q = self._proj(x, self.query)[:, 0]  # [B, H, K]
    logits = jnp.einsum("bhk,bhsk->bhs", q, keys.astype(dt), preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits[:, :, None] + bias, axis=-1)[:, :, 0]  # [B, H, Lk]
    mixed = jnp.einsum("bhs,bhsk->bhk", weights.astype(dt), values.astype(dt))
    return jnp.einsum("bhk,hke->be", mixed, self.out.astype(dt))[:, None]


class EncoderLayer(nn.Module):
  cfg: T5Config

  def setup(self):
    self.attention_norm = RMSNorm(self.cfg)
    self.attention = Attention(self.cfg)
    self.mlp_norm = RMSNorm(self.cfg)
    self.mlp = GatedMlp(self.cfg)
    self.dropout = nn.Dropout(self.cfg.dropout_rate)

  def __call__(self, x: Array, bias: Array, train: bool) -> Array:
    h = self.attention_norm(x)
    x = x + self.dropout(
      self.attention(h, *self.attention.project_kv(h), bias, train), deterministic=not train
    )
    x = x + self.dropout(self.mlp(self.mlp_norm(x), train), deterministic=not train)
    return residual_constraint(x)


class DecoderLayer(nn.Module):
  cfg: T5Config

  def setup(self):
    self.self_attention_norm = RMSNorm(self.cfg)
    self.self_attention = Attention(self.cfg)
    self.cross_attention_norm = RMSNorm(self.cfg)
    self.cross_attention = Attention(self.cfg)
    self.mlp_norm = RMSNorm(self.cfg)
    self.mlp = GatedMlp(self.cfg)
    self.dropout = nn.Dropout(self.cfg.dropout_rate)

  def cross_kv(self, encoded: Array) -> tuple[Array, Array]:
    return self.cross_attention.project_kv(encoded)

  def __call__(
    self, x: Array, self_bias: Array, encoded: Array, cross_bias: Array, train: bool
  ) -> Array:
    """One decoder block on `x` [B, Lt, E] (teacher forcing): the self-attention keys/values are
    those of `x`, the cross-attention ones those of `encoded` [B, Li, E]; biases as in
    `Attention.__call__`."""
    h = self.self_attention_norm(x)
    x = x + self.dropout(
      self.self_attention(h, *self.self_attention.project_kv(h), self_bias, train),
      deterministic=not train,
    )
    h = self.cross_attention_norm(x)
    x = x + self.dropout(
      self.cross_attention(h, *self.cross_kv(encoded), cross_bias, train), deterministic=not train
    )
    x = x + self.dropout(self.mlp(self.mlp_norm(x), train), deterministic=not train)
    return residual_constraint(x)

  def step(
    self, x: Array, self_bias: Array, cache: Cache, index: Array, cross_bias: Array
  ) -> tuple[Array, Cache]:
    """The block for one token at position `index` (incremental decoding, no dropout).

    `x` [B, 1, E]; `cache` is this layer's entry of `T5.init_cache` (heads-major [B, H, L, K]
    arrays). The token's key and value are written into the cache at `index`, attention runs
    over the whole cache (`self_bias` [1, H, 1, Lmax] masks the unwritten part) and the encoder
    projections. Returns the block's output [B, 1, E] and the updated layer cache.
    """
    h = self.self_attention_norm(x)
    written = {
      name: jax.lax.dynamic_update_slice_in_dim(
        cache[name], heads_major(new).astype(cache[name].dtype), index, axis=2
      )
      for name, new in zip(("self_keys", "self_values"), self.self_attention.project_kv(h))
    }
    x = x + self.self_attention.attend_cached(
      h, written["self_keys"], written["self_values"], self_bias
    )
    h = self.cross_attention_norm(x)
    x = x + self.cross_attention.attend_cached(
      h, cache["cross_keys"], cache["cross_values"], cross_bias
    )
    x = x + self.mlp(self.mlp_norm(x), train=False)
    return residual_constraint(x), {**cache, **written}

  def cache(self, encoded: Array, max_decode_length: int) -> Cache:
    """This layer's entry of `T5.init_cache`: zero self-attention keys/values [B, H, Lmax, K],
    cross-attention projections of `encoded` [B, H, Li, K]."""
    cfg = self.cfg
    zeros = jnp.zeros(
      (encoded.shape[0], cfg.num_heads, max_decode_length, cfg.d_kv), cfg.compute_dtype
    )
    cross_keys, cross_values = self.cross_kv(encoded)
    return dict(
      self_keys=zeros,
      self_values=zeros,
      cross_keys=heads_major(cross_keys),
      cross_values=heads_major(cross_values),
    )


def layer_class(cls: type[nn.Module], cfg: T5Config, train_argnum: int) -> type[nn.Module]:
  """`cls`, rematerialised under `cfg.remat`; `train_argnum` is the position of `__call__`'s
  `train` flag (self = 0), a static argument."""
  if cfg.remat == "none":
    return cls
  return nn.remat(
    cls,
    policy=REMAT_POLICIES[cfg.remat],
    prevent_cse=not cfg.scan_layers,  # scan already keeps XLA from merging the recomputation
    static_argnums=(train_argnum,),
  )


def scan_layers(fn: Any, length: int, in_axes: Any) -> Any:
  """`fn(layer, carry, *xs) -> (carry, ys)` scanned over `length` layers whose parameters are
  stacked along a leading `LAYERS_AXIS` (each step sees one layer's slice, and its own dropout
  and init rngs); `in_axes` as in `nn.scan` (`nn.broadcast`: the same value for every layer)."""
  return nn.scan(
    fn,
    variable_axes={"params": 0},
    split_rngs={"params": True, "dropout": True},
    in_axes=in_axes,
    length=length,
    metadata_params={nn.PARTITION_NAME: LAYERS_AXIS},
  )


def padding_bias(mask: Array) -> Array:
  """[B, Lk] bool (True = attend) -> additive [B, 1, 1, Lk] float32 bias."""
  return jnp.where(mask, 0.0, NEG_INF)[:, None, None, :].astype(jnp.float32)
