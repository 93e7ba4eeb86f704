"""T5 v1.1 model configuration and the named sizes.

The public T5 v1.1 dimensions (google/t5-v1_1-{small,base,large,xl}) are reproduced exactly;
`tiny` is a CPU-sized model of the same architecture (a few hundred thousand parameters).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax.numpy as jnp

# T5's decoder start token (its `decoder_start_token_id`, fed before the first response token).
# Its pad and EOS ids are `th_distill.models.tokens.T5_TOKENS`.
DECODER_START_ID = 0
# The values of `T5Config.remat`.
REMAT = ("none", "full", "dots")


def check_fields(cfg: Any, positive: tuple[str, ...], flags: tuple[str, ...]) -> None:
  """The checks a model config's shared fields need, in this order: the `positive` ints,
  `dropout_rate` in [0, 1), `dtype` and `param_dtype`, the bool `flags`, `remat`; a ValueError
  naming `Class.field` on the first that fails."""
  name = type(cfg).__name__
  for field in positive:
    value = getattr(cfg, field)
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"{name}.{field} must be a positive int, got {value!r}.")
  if not 0.0 <= cfg.dropout_rate < 1.0:
    raise ValueError(f"{name}.dropout_rate must be in [0, 1), got {cfg.dropout_rate!r}.")
  for field in ("dtype", "param_dtype"):
    if getattr(cfg, field) not in ("float32", "bfloat16"):
      raise ValueError(
        f"{name}.{field} must be 'float32' or 'bfloat16', got {getattr(cfg, field)!r}."
      )
  for field in flags:
    if not isinstance(getattr(cfg, field), bool):
      raise ValueError(f"{name}.{field} must be a bool, got {getattr(cfg, field)!r}.")
  if cfg.remat not in REMAT:
    raise ValueError(f"{name}.remat must be one of {REMAT}, got {cfg.remat!r}.")


class Dtypes:
  """The dtypes of a model config's `dtype` / `param_dtype` fields, and `replace`."""

  @property
  def compute_dtype(self) -> Any:
    return jnp.dtype(self.dtype)

  @property
  def storage_dtype(self) -> Any:
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes) -> Any:
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class T5Config(Dtypes):
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

  family: ClassVar[str] = "t5"  # the model interface's family name (not a field)

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
    check_fields(
      self,
      positive=(
        "vocab_size",
        "d_model",
        "d_kv",
        "d_ff",
        "num_heads",
        "num_encoder_layers",
        "num_decoder_layers",
        "relative_attention_num_buckets",
        "relative_attention_max_distance",
      ),
      flags=("scan_layers",),
    )

  # The model interface (`th_distill.models.interface.ModelConfig`).

  def describe(self) -> str:
    return f"d_model {self.d_model}, {self.num_encoder_layers}+{self.num_decoder_layers} layers"

  # Analytic costs from the shapes alone (`th_distill.planning.flops` and `.memory` read them).
  # A matmul of [m, n] x [n, p] is 2 m n p FLOPs; element-wise work is not counted. With
  # E = d_model, A = heads x d_kv, F = d_ff, V = vocab, per example of Li input and Lt target
  # tokens:
  #   encoder layer:  Li (8 E A + 6 E F) + 4 Li^2 A                   (q, k, v, o; MLP; scores, mix)
  #   decoder layer:  Lt (8 E A + 6 E F) + 4 Lt^2 A                   (self-attention, MLP)
  #                   + Lt 4 E A + Li 4 E A + 4 Lt Li A               (cross-attention q, o; k, v)
  #   output layer:   2 Lt E V
  # Generation of Lt tokens: the encoder once, the cross-attention keys and values once
  # (Li 4 E A per decoder layer), then per token the projections and MLP of a forward position
  # (8 E A + 6 E F + 4 E A per layer) and the output layer (2 E V); token t (from 0) attends to
  # t + 1 cached keys and Li encoder positions, 4 A per key: 4 A (Lt (Lt + 1) / 2 + Lt Li) per
  # layer. This is the work intrinsic to the model: an implementation that attends over a
  # longer (static) cache does more than it is credited with.

  def _encoder_flops(self, li: int) -> int:
    e, a, f = self.d_model, self.num_heads * self.d_kv, self.d_ff
    return self.num_encoder_layers * (li * (8 * e * a + 6 * e * f) + 4 * li * li * a)

  def forward_flops(self, input_length: int, target_length: int) -> float:
    """FLOPs of one teacher-forced forward pass, per example."""
    e, a, f, v = self.d_model, self.num_heads * self.d_kv, self.d_ff, self.vocab_size
    li, lt = input_length, target_length
    decoder = self.num_decoder_layers * (
      lt * (8 * e * a + 6 * e * f)
      + 4 * lt * lt * a
      + lt * 4 * e * a
      + li * 4 * e * a
      + 4 * lt * li * a
    )
    return float(self._encoder_flops(li) + decoder + 2 * lt * e * v)

  def generation_flops(self, input_length: int, target_length: int) -> float:
    """FLOPs of encoding plus incremental decoding of `target_length` tokens, per example."""
    e, a, f, v = self.d_model, self.num_heads * self.d_kv, self.d_ff, self.vocab_size
    li, lt = input_length, target_length
    per_token = self.num_decoder_layers * (8 * e * a + 6 * e * f + 4 * e * a) + 2 * e * v
    attention = self.num_decoder_layers * 4 * a * (lt * (lt + 1) // 2 + lt * li)
    cross_kv = self.num_decoder_layers * li * 4 * e * a
    return float(self._encoder_flops(li) + cross_kv + lt * per_token + attention)

  def activation_bytes(
    self, rows: float, prompt_length: int, response_length: int, model_split: int
  ) -> float:
    """Float32 activations the backward pass keeps for `rows` sequences: per token and layer
    4E + 4HK + 2H*Li + 3F in the encoder, 6E + 8HK + 2H*(Li + Lt) + 3F in the decoder. With
    `remat = 'full'` a layer keeps only its input (E per token) and one layer's activations are
    rebuilt at a time; 'dots' is counted as 'none' (an upper bound)."""
    e, hk, h, f = (
      self.d_model,
      self.num_heads * self.d_kv / model_split,
      self.num_heads / model_split,
      self.d_ff / model_split,
    )
    encoder = 4 * e + 4 * hk + 2 * h * prompt_length + 3 * f
    decoder = 6 * e + 8 * hk + 2 * h * (prompt_length + response_length) + 3 * f
    tokens_in, tokens_out = rows * prompt_length, rows * response_length
    if self.remat == "full":
      kept = e * (self.num_encoder_layers * tokens_in + self.num_decoder_layers * tokens_out)
      return 4.0 * (kept + max(encoder * tokens_in, decoder * tokens_out))
    return 4.0 * (
      self.num_encoder_layers * encoder * tokens_in + self.num_decoder_layers * decoder * tokens_out
    )

  def working_set_bytes(
    self, rows: float, prompt_length: int, response_length: int, model_split: int
  ) -> float:
    """Float32 activations of one encoder layer for `rows` sequences, the working set of a
    forward-only pass (whatever `response_length`): per token 3H*Li + 2E + F (three copies of
    the attention scores, alive together in XLA's softmax; the residual stream and its
    normalised copy; one MLP hidden)."""
    h, f = self.num_heads / model_split, self.d_ff / model_split
    return 4.0 * rows * prompt_length * (3 * h * prompt_length + 2 * self.d_model + f)

  def kv_cache_bytes(
    self, rows: float, prompt_length: int, response_length: int, model_split: int
  ) -> float:
    """The sampler's float32 cache: keys and values of every decoder layer over the response
    (self-attention) and the prompt (cross-attention)."""
    return (
      4.0
      * 2
      * self.num_decoder_layers
      * rows
      * (prompt_length + response_length)
      * self.num_heads
      * self.d_kv
      / model_split
    )


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
