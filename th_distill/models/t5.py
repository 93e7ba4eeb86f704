"""T5 v1.1 encoder-decoder in Flax linen, with an explicit KV cache for incremental decoding.

Architecture (as in the public T5 v1.1 checkpoints): pre-norm residual blocks with RMSNorm (no
mean subtraction, no bias), gated-GELU MLP (tanh approximation), bucketed relative position bias
computed by the first layer of each stack and shared by its other layers, no biases anywhere,
no 1/sqrt(d) attention scaling (folded into the initialisation), an output layer untied from the
shared input embedding, and no embedding rescaling.

Every parameter carries logical axis names (`vocab, embed, heads, kv, mlp, relpos_buckets`) through
`nn.with_logical_partitioning`, and activations carry `batch, length, ...` constraints, so the
same module is sharded by `th_distill.partitioning` rules without any change here.

Shapes: B batch, Li encoder (prompt) length, Lt decoder (target) length, E d_model, H heads,
K d_kv, F d_ff, V vocab. Token id 0 is padding (and the decoder start token), 1 is EOS.

The decoding cache is a plain pytree (see `init_cache`), so it can be carried through
`lax.while_loop` and sharded like any other array.

With `cfg.scan_layers` each stack runs its layers under `nn.scan`: the parameters of a stack are
stacked along a leading axis with the logical name `layers` (`stack_layers` / `unstack_layers`
convert between the layouts), and so is the decoding cache. `cfg.remat` wraps each layer in
`nn.remat` with the policy of `REMAT_POLICIES`.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from th_distill.models.config import DECODER_START_ID, T5Config
from th_distill.models.layers import (
  NEG_INF,
  SELF_KV,
  RMSNorm,
  extend_cache,
  normal,
  residual_constraint,
)
from th_distill.models.t5_blocks import (
  DecoderLayer,
  EncoderLayer,
  RelativePositionBias,
  layer_class,
  padding_bias,
  scan_layers,
)

Array = jax.Array
Cache = dict[str, Any]


class T5(nn.Module):
  """T5 v1.1 encoder-decoder.

  Methods (call through `model.apply({'params': params}, ..., method=...)`):
    __call__(input_tokens, input_mask, decoder_input_tokens, train) -> logits [B, Lt, V]
      (teacher forcing)
    encode(input_tokens, input_mask, train) -> encoded [B, Li, E]
    decode(encoded, input_mask, decoder_input_tokens, train) -> logits [B, Lt, V]
    decode_hidden(...same...) -> hidden [B, Lt, E]; logits_from_hidden(hidden, train) -> logits
    init_cache(encoded, input_mask, max_decode_length) -> cache
    decode_step(decoder_token, cache) -> (logits [B, V], cache)
  and the model interface (`th_distill.models.interface.LanguageModel`): response_logits,
  response_hidden, start_decode (encode + init_cache; the decoder start token), extend_cache.
  Logits are float32. `input_mask` [B, Li] bool marks the real input tokens: it alone fixes the
  encoder's padding, whatever id the padded positions hold.
  With `cfg.scan_layers`, `encoder_layers` / `decoder_layers` are one scanned layer each (stacked
  parameters); otherwise lists of layers (`encoder_layers_{i}`, ...).
  """

  cfg: T5Config

  def setup(self):
    cfg = self.cfg
    self.token_embedder = self.param(
      "token_embedder",
      nn.with_logical_partitioning(normal(1.0), ("vocab", "embed")),
      (cfg.vocab_size, cfg.d_model),
      cfg.storage_dtype,
    )
    self.encoder_relpos = RelativePositionBias(cfg, bidirectional=True)
    encoder_layer = layer_class(EncoderLayer, cfg, train_argnum=3)
    decoder_layer = layer_class(DecoderLayer, cfg, train_argnum=5)
    if cfg.scan_layers:
      self.encoder_layers = encoder_layer(cfg)
      self.decoder_layers = decoder_layer(cfg)
    else:
      self.encoder_layers = [encoder_layer(cfg) for _ in range(cfg.num_encoder_layers)]
      self.decoder_layers = [decoder_layer(cfg) for _ in range(cfg.num_decoder_layers)]
    self.encoder_norm = RMSNorm(cfg)
    self.decoder_relpos = RelativePositionBias(cfg, bidirectional=False)
    self.decoder_norm = RMSNorm(cfg)
    self.logits_kernel = self.param(
      "logits_kernel",
      nn.with_logical_partitioning(normal(cfg.d_model**-0.5), ("embed", "vocab")),
      (cfg.d_model, cfg.vocab_size),
      cfg.storage_dtype,
    )
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def _embed(self, tokens: Array, train: bool) -> Array:
    x = jnp.take(self.token_embedder, tokens, axis=0).astype(self.cfg.compute_dtype)
    return residual_constraint(self.dropout(x, deterministic=not train))

  def _logits(self, x: Array, train: bool) -> Array:
    x = self.dropout(self.decoder_norm(x), deterministic=not train)
    logits = jnp.einsum(
      "...e,ev->...v",
      x,
      self.logits_kernel.astype(self.cfg.compute_dtype),
      preferred_element_type=jnp.float32,
    )
    return logits.astype(jnp.float32)

  def encode(self, input_tokens: Array, input_mask: Array, train: bool = False) -> Array:
    """Encodes `input_tokens` [B, Li] into [B, Li, E] (compute dtype); `input_mask` [B, Li] bool
    marks the real tokens (the others are masked as keys)."""
    length = input_tokens.shape[1]
    positions = jnp.arange(length)
    bias = self.encoder_relpos(positions, positions) + padding_bias(input_mask)
    x = self._embed(input_tokens, train)
    if self.cfg.scan_layers:
      x, _ = scan_layers(
        lambda layer, x, bias: (layer(x, bias, train), None),
        self.cfg.num_encoder_layers,
        nn.broadcast,
      )(self.encoder_layers, x, bias)
    else:
      for layer in self.encoder_layers:
        x = layer(x, bias, train)
    return self.dropout(self.encoder_norm(x), deterministic=not train)

  def decode(
    self, encoded: Array, input_mask: Array, decoder_input_tokens: Array, train: bool = False
  ) -> Array:
    """Teacher-forced decoder: [B, Lt] shifted-right targets -> logits [B, Lt, V] float32, over
    `encoded` [B, Li, E] whose real positions `input_mask` [B, Li] marks."""
    return self._logits(self.decode_hidden(encoded, input_mask, decoder_input_tokens, train), train)

  def decode_hidden(
    self, encoded: Array, input_mask: Array, decoder_input_tokens: Array, train: bool = False
  ) -> Array:
    """`decode` up to the last decoder layer: hidden states [B, Lt, E] before the final norm.

    With `logits_from_hidden` this lets callers compute [B, Lt, V] logits a chunk of positions at
    a time (bounding their memory)."""
    length = decoder_input_tokens.shape[1]
    positions = jnp.arange(length)
    causal = positions[None, :] <= positions[:, None]
    self_bias = self.decoder_relpos(positions, positions) + jnp.where(causal, 0.0, NEG_INF)
    cross_bias = padding_bias(input_mask)
    x = self._embed(decoder_input_tokens, train)
    if self.cfg.scan_layers:
      x, _ = scan_layers(
        lambda layer, x, *context: (layer(x, *context, train), None),
        self.cfg.num_decoder_layers,
        (nn.broadcast,) * 3,
      )(self.decoder_layers, x, self_bias, encoded, cross_bias)
    else:
      for layer in self.decoder_layers:
        x = layer(x, self_bias, encoded, cross_bias, train)
    return x

  def logits_from_hidden(self, hidden: Array, train: bool = False) -> Array:
    """Final norm and output layer: hidden [..., E] from `decode_hidden` -> logits [..., V]."""
    return self._logits(hidden, train)

  def __call__(
    self,
    input_tokens: Array,
    input_mask: Array,
    decoder_input_tokens: Array,
    train: bool = False,
  ) -> Array:
    encoded = self.encode(input_tokens, input_mask, train)
    return self.decode(encoded, input_mask, decoder_input_tokens, train)

  # The model interface (`th_distill.models.interface.LanguageModel`).

  def response_logits(
    self, prompts: Array, prompt_mask: Array, responses: Array, train: bool = False
  ) -> Array:
    """Teacher-forced logits [B, Lt, V] of `responses` [B, Lt] (decoder fed `shift_right`)."""
    return self(prompts, prompt_mask, shift_right(responses), train)

  def response_hidden(
    self, prompts: Array, prompt_mask: Array, responses: Array, train: bool = False
  ) -> Array:
    """`decode_hidden` [B, Lt, E] of `responses` after encoding `prompts`."""
    encoded = self.encode(prompts, prompt_mask, train)
    return self.decode_hidden(encoded, prompt_mask, shift_right(responses), train)

  def start_decode(
    self, prompts: Array, prompt_mask: Array, max_decode_length: int
  ) -> tuple[Array, Cache]:
    """`encode` and `init_cache`: (the decoder start token for every row [B], cache)."""
    cache = self.init_cache(self.encode(prompts, prompt_mask), prompt_mask, max_decode_length)
    return jnp.full((prompts.shape[0],), DECODER_START_ID, jnp.int32), cache

  @staticmethod
  def extend_cache(cache: Cache, max_decode_length: int) -> Cache:
    """Module-level `extend_cache`."""
    return extend_cache(cache, max_decode_length)

  def init_cache(self, encoded: Array, input_mask: Array, max_decode_length: int) -> Cache:
    """Decoding cache for `max_decode_length` steps after `encode` (`input_mask` [B, Li] bool:
    the real encoder positions).

    Returns {'index': int32 scalar (next position), 'cross_bias': [B, 1, 1, Li],
    'layers': [per decoder layer: {'self_keys', 'self_values': [B, H, Lmax, K] zeros,
    'cross_keys', 'cross_values': [B, H, Li, K] projections of `encoded`}]}: heads-major
    (`heads_major`), the layout `Attention.attend_cached` reads. The encoder-side projections
    are computed once here, never per step. With `cfg.scan_layers`, 'layers' is one such dict
    whose arrays are stacked along a leading layer axis ([Ld, B, H, Lmax, K], ...).
    """
    if self.cfg.scan_layers:
      _, layers = scan_layers(
        lambda layer, carry, encoded: (carry, layer.cache(encoded, max_decode_length)),
        self.cfg.num_decoder_layers,
        nn.broadcast,
      )(self.decoder_layers, None, encoded)
    else:
      layers = [layer.cache(encoded, max_decode_length) for layer in self.decoder_layers]
    return dict(
      index=jnp.zeros((), jnp.int32),
      layers=layers,
      cross_bias=padding_bias(input_mask),
    )

  def decode_step(self, decoder_token: Array, cache: Cache) -> tuple[Array, Cache]:
    """Feeds `decoder_token` [B] at position `cache['index']`: logits [B, V] and the new cache."""
    index = cache["index"]
    max_length = _self_keys(cache).shape[-2]
    key_positions = jnp.arange(max_length)
    self_bias = (
      self.decoder_relpos(index[None], key_positions)
      + jnp.where(key_positions <= index, 0.0, NEG_INF)[None, None, None, :]
    )
    x = self._embed(decoder_token[:, None], train=False)
    if self.cfg.scan_layers:
      x, new_layers = self._scanned_step(x, self_bias, cache)
    else:
      new_layers = []
      for layer, layer_cache in zip(self.decoder_layers, cache["layers"]):
        x, layer_cache = layer.step(x, self_bias, layer_cache, index, cache["cross_bias"])
        new_layers.append(layer_cache)
    logits = self._logits(x[:, 0], train=False)
    return logits, {**cache, "index": index + 1, "layers": new_layers}

  def _scanned_step(self, x: Array, self_bias: Array, cache: Cache) -> tuple[Array, Cache]:
    """`decode_step`'s decoder layers under scan: `x` [B, 1, E] -> (output [B, 1, E], the
    stacked layer caches with this token's keys/values written). Only the new [Ld, B, H, 1, K]
    keys/values leave the scan and are written into the stacked cache once: the rest of the
    cache (cross-attention entries included) is only read."""
    index = cache["index"]

    def body(layer, x, layer_cache):
      x, written = layer.step(x, self_bias, layer_cache, index, cache["cross_bias"])
      return x, {k: jax.lax.dynamic_slice_in_dim(written[k], index, 1, axis=2) for k in SELF_KV}

    x, new = scan_layers(body, self.cfg.num_decoder_layers, 0)(
      self.decoder_layers, x, cache["layers"]
    )
    layers = cache["layers"]
    return x, {
      **layers,
      **{k: jax.lax.dynamic_update_slice_in_dim(layers[k], new[k], index, axis=3) for k in SELF_KV},
    }


def _self_keys(cache: Cache) -> Array:
  """The self-attention keys of the first layer [B, H, Lmax, K], or of all [Ld, B, H, Lmax, K]."""
  layers = cache["layers"]
  return (layers[0] if isinstance(layers, list) else layers)["self_keys"]


def shift_right(targets: Array) -> Array:
  """Decoder inputs from targets [B, Lt]: prepend T5's decoder start token (`DECODER_START_ID`,
  its `decoder_start_token_id`), drop the last token."""
  return jnp.pad(targets, ((0, 0), (1, 0)), constant_values=DECODER_START_ID)[:, :-1]


@functools.partial(jax.jit, static_argnames=("model", "input_length", "target_length"))
def init_params(model: T5, rng: Array, input_length: int = 8, target_length: int = 8) -> Any:
  """Boxed (logically annotated) parameters of `model`; `nn.unbox` gives plain arrays.

  `jax.eval_shape(init_params, model, rng)` gives their shapes without computing them.
  """
  tokens = jnp.ones((1, input_length), jnp.int32)
  mask = jnp.ones((1, input_length), bool)
  return model.init(rng, tokens, mask, jnp.ones((1, target_length), jnp.int32))["params"]


def _stack(leaves: tuple[Any, ...]) -> Any:
  if all(isinstance(x, np.ndarray) for x in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def stack_layers(params: dict[str, Any]) -> dict[str, Any]:
  """Unrolled parameters -> the `scan_layers` layout.

  The layers `encoder_layers_{i}` (and `decoder_layers_{i}`) become one entry `encoder_layers`
  whose leaves are theirs stacked along a new leading axis in layer order ([E] -> [Le, E],
  [E, H, K] -> [Le, E, H, K], ...). Leaves are plain arrays (`nn.unbox` boxed ones first); numpy
  leaves stay numpy. The other entries, and a stack already in the scanned layout, are kept.
  """
  params = dict(params)
  for stack in ("encoder", "decoder"):
    names = sorted(
      (k for k in params if re.fullmatch(rf"{stack}_layers_\d+", k)),
      key=lambda k: int(k.rsplit("_", 1)[1]),
    )
    if names:
      layers = [params.pop(k) for k in names]
      params[f"{stack}_layers"] = jax.tree_util.tree_map(lambda *xs: _stack(xs), *layers)
  return params


def unstack_layers(params: dict[str, Any]) -> dict[str, Any]:
  """The `scan_layers` layout -> unrolled parameters: the exact inverse of `stack_layers`
  (`encoder_layers` [Le, ...] -> `encoder_layers_{i}` [...], same for the decoder). A stack
  already unrolled is kept."""
  params = dict(params)
  for stack in ("encoder", "decoder"):
    stacked = params.pop(f"{stack}_layers", None)
    if stacked is not None:
      for i in range(jax.tree_util.tree_leaves(stacked)[0].shape[0]):
        params[f"{stack}_layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
  return params
