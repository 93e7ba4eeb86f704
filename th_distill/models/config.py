"""T5 v1.1 model configuration and the named sizes.

The public T5 v1.1 dimensions (google/t5-v1_1-{small,base,large,xl}) are reproduced exactly;
`tiny` is a CPU-sized model of the same architecture (a few hundred thousand parameters).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# Token conventions shared with T5: id 0 is padding and also the decoder start token, id 1 is EOS.
PAD_ID = 0
EOS_ID = 1
DECODER_START_ID = 0
# The values of `T5Config.remat`.
REMAT = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of a T5 v1.1 encoder-decoder.

  Attributes:
    vocab_size: size of the (shared) input embedding and of the output layer.
    d_model: width of the residual stream.
    d_kv: width of one attention head.
    d_ff: hidden width of the gated-GELU MLP.
    num_heads: attention heads per layer.
    num_encoder_layers / num_decoder_layers: depth of each stack.
    relative_attention_num_buckets / relative_attention_max_distance: relative position bias.
    dropout_rate: dropout after embeddings, every sub-layer and the final norms (train only).
    layer_norm_eps: RMSNorm epsilon.
    dtype: compute dtype of the matmuls ('float32' or 'bfloat16'); norms, softmax and the returned
      logits are always float32.
    param_dtype: storage dtype of the parameters.
    scan_layers: run each stack's layers under `flax.linen.scan`: one compiled layer body, and
      parameters stacked along a leading `layers` axis (`encoder_layers/...` [Le, ...] instead of
      `encoder_layers_{i}/...`; `stack_layers` / `unstack_layers` convert); the decoding cache is
      stacked likewise. Same numbers as the unrolled model up to float rounding.
    remat: rematerialisation of each layer in the backward pass: 'none' (keep every activation),
      'full' (keep only each layer's input and recompute the rest: t5x's 'full') or 'dots' (keep
      the matmul outputs without batch dimensions, i.e. the weight projections, and recompute the
      attention scores and elementwise ops: `jax.checkpoint_policies.
      dots_with_no_batch_dims_saveable`, t5x's 'minimal'). With or without `scan_layers`.
  """

  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 1024
  num_heads: int = 6
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.0
  layer_norm_eps: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = False
  remat: str = "none"

  def __post_init__(self):
    for name in (
      "vocab_size",
      "d_model",
      "d_kv",
      "d_ff",
      "num_heads",
      "num_encoder_layers",
      "num_decoder_layers",
      "relative_attention_num_buckets",
      "relative_attention_max_distance",
    ):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"T5Config.{name} must be a positive int, got {value!r}.")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate!r}.")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16"):
        raise ValueError(
          f"T5Config.{name} must be 'float32' or 'bfloat16', got {getattr(self, name)!r}."
        )
    if not isinstance(self.scan_layers, bool):
      raise ValueError(f"T5Config.scan_layers must be a bool, got {self.scan_layers!r}.")
    if self.remat not in REMAT:
      raise ValueError(f"T5Config.remat must be one of {REMAT}, got {self.remat!r}.")

  @property
  def compute_dtype(self) -> Any:
    return jnp.dtype(self.dtype)

  @property
  def storage_dtype(self) -> Any:
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes) -> T5Config:
    return dataclasses.replace(self, **changes)


_SIZES = {
  # A CPU-sized model of the same architecture (0.21M parameters at vocab 128).
  "tiny": dict(
    vocab_size=128,
    d_model=64,
    d_kv=16,
    d_ff=128,
    num_heads=4,
    num_encoder_layers=2,
    num_decoder_layers=2,
  ),
  # Public T5 v1.1 dimensions.
  "small": dict(
    vocab_size=32128,
    d_model=512,
    d_kv=64,
    d_ff=1024,
    num_heads=6,
    num_encoder_layers=8,
    num_decoder_layers=8,
  ),
  "base": dict(
    vocab_size=32128,
    d_model=768,
    d_kv=64,
    d_ff=2048,
    num_heads=12,
    num_encoder_layers=12,
    num_decoder_layers=12,
  ),
  "large": dict(
    vocab_size=32128,
    d_model=1024,
    d_kv=64,
    d_ff=2816,
    num_heads=16,
    num_encoder_layers=24,
    num_decoder_layers=24,
  ),
  "xl": dict(
    vocab_size=32128,
    d_model=2048,
    d_kv=64,
    d_ff=5120,
    num_heads=32,
    num_encoder_layers=24,
    num_decoder_layers=24,
  ),
}

SIZES = tuple(_SIZES)


def t5_config(size: str, **overrides) -> T5Config:
  """The named T5 v1.1 size (`tiny`, `small`, `base`, `large`, `xl`), with field overrides."""
  if size not in _SIZES:
    raise ValueError(f"Unknown T5 size {size!r}; expected one of {SIZES}.")
  return T5Config(**{**_SIZES[size], **overrides})
