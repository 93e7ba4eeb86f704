"""Configuration of the decoder-only family (`th_distill.models.decoder.Decoder`) and its sizes.

A Llama-style causal transformer: RoPE, RMSNorm, gated MLP, grouped-query attention, tied or
untied embeddings. The analytic costs the planners read (`forward_flops`, `generation_flops`,
`activation_bytes`, `working_set_bytes`, `kv_cache_bytes`: the `ModelConfig` protocol of
`th_distill.models.interface`) are methods here, from the shapes alone.

Shapes: E d_model, H heads, G kv heads, K head width (d_kv), F d_ff, V vocabulary, N layers; a
(prompt, response) pair of Li + Lt tokens is one causal sequence of Li + Lt - 1 positions.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from th_distill.models.config import Dtypes, check_fields

MLP_ACTIVATIONS = ("silu", "gelu_tanh")  # Llama / Qwen2, Gemma


@dataclasses.dataclass(frozen=True)
class DecoderConfig(Dtypes):
  """Hyper-parameters of a decoder-only transformer (`family = 'decoder'` in a model sub-config).

  Attributes:
    vocab_size: rows of the input embedding and of the output layer.
    d_model: width of the residual stream.
    num_heads / num_kv_heads: query heads and key/value heads (grouped-query attention:
      `num_kv_heads` divides `num_heads`; equal is multi-head attention, 1 multi-query).
    d_kv: width of one head.
    d_ff: hidden width of the gated MLP, `(act(x wi_0) * (x wi_1)) wo`.
    num_layers: depth.
    rope_theta: base of the rotary position embedding's frequencies.
    layer_norm_eps: RMSNorm epsilon.
    tie_embeddings: the output layer is the input embedding transposed (no `logits_kernel`).
    qkv_bias: biases on the query, key and value projections (Qwen2; Llama and Gemma have none).
    mlp_activation: 'silu' (Llama, Qwen2) or 'gelu_tanh' (Gemma).
    dropout_rate: dropout after the embeddings, each sub-layer's output and the MLP hidden layer.
    dtype / param_dtype: compute and storage dtypes ('float32' or 'bfloat16'); norms, softmax,
      RoPE and the returned logits are float32.
    remat: 'none', 'full' or 'dots', as `T5Config.remat`.
  """

  family: ClassVar[str] = "decoder"

  vocab_size: int = 32000
  d_model: int = 512
  num_heads: int = 8
  num_kv_heads: int = 8
  d_kv: int = 64
  d_ff: int = 1376
  num_layers: int = 8
  rope_theta: float = 10000.0
  layer_norm_eps: float = 1e-6
  tie_embeddings: bool = False
  qkv_bias: bool = False
  mlp_activation: str = "silu"
  dropout_rate: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"

  def __post_init__(self):
    check_fields(
      self,
      positive=("vocab_size", "d_model", "num_heads", "num_kv_heads", "d_kv", "d_ff", "num_layers"),
      flags=("tie_embeddings", "qkv_bias"),
    )
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"DecoderConfig.num_kv_heads = {self.num_kv_heads} must divide num_heads = "
        f"{self.num_heads}."
      )
    if self.d_kv % 2:
      raise ValueError(f"DecoderConfig.d_kv must be even (RoPE pairs), got {self.d_kv}.")
    if not self.rope_theta > 0 or not self.layer_norm_eps > 0:
      raise ValueError("DecoderConfig.rope_theta and layer_norm_eps must be > 0.")
    if self.mlp_activation not in MLP_ACTIVATIONS:
      raise ValueError(
        f"DecoderConfig.mlp_activation must be one of {MLP_ACTIVATIONS}, got "
        f"{self.mlp_activation!r}."
      )

  def describe(self) -> str:
    return (
      f"decoder-only, d_model {self.d_model}, {self.num_layers} layers, "
      f"{self.num_heads}/{self.num_kv_heads} heads"
    )

  # Analytic costs (`ModelConfig`): a matmul [m, n] x [n, p] is 2 m n p FLOPs.

  def _layer_flops_per_position(self) -> float:
    """Projections (q, o: 2 E H K each; k, v: 2 E G K each) and the MLP (6 E F), x2 per MAC."""
    e, q, kv = self.d_model, self.num_heads * self.d_kv, self.num_kv_heads * self.d_kv
    return 4 * e * q + 4 * e * kv + 6 * e * self.d_ff

  def forward_flops(self, input_length: int, target_length: int) -> float:
    """One teacher-forced pass over the Li + Lt - 1 positions, per example: per layer
    L (4 E HK + 4 E GK + 6 E F) + 4 L^2 HK (scores and mixing over the whole causal square,
    as computed), plus the output layer on the Lt response positions (2 Lt E V)."""
    length = input_length + target_length - 1
    a = self.num_heads * self.d_kv
    layer = length * self._layer_flops_per_position() + 4 * length * length * a
    return float(self.num_layers * layer + 2 * target_length * self.d_model * self.vocab_size)

  def generation_flops(self, input_length: int, target_length: int) -> float:
    """Prefill of Li - 1 prompt positions, then Lt single-token steps, per example: step t
    (from 0) attends to Li + t keys; the output layer once per step."""
    a, prefill = self.num_heads * self.d_kv, input_length - 1
    layers = self.num_layers * (
      (prefill + target_length) * self._layer_flops_per_position()
      + 4 * prefill * prefill * a
      + 4 * a * (target_length * input_length + target_length * (target_length - 1) // 2)
    )
    return float(layers + 2 * target_length * self.d_model * self.vocab_size)

  def activation_bytes(
    self, rows: float, prompt_length: int, response_length: int, model_split: int
  ) -> float:
    """Float32 activations the backward pass keeps for `rows` sequences: per position and layer
    6E + 3HK + 3GK + 2H*L + 4F (residual, norm and sub-layer outputs; q, k, v before and after
    RoPE, mixed; the attention logits and weights over the L = Li + Lt - 1 positions; the MLP's
    gate, up, activation and product), plus one layer's backward working set, 2H*L per position
    (the gradients of the attention weights and logits). With `remat = 'full'` a layer keeps
    only its input (E per position) and one layer's activations are rebuilt at a time; 'dots'
    is counted as 'none' (an upper bound)."""
    length = prompt_length + response_length - 1
    hk = self.num_heads * self.d_kv / model_split
    gk = self.num_kv_heads * self.d_kv / model_split
    h, f = self.num_heads / model_split, self.d_ff / model_split
    per_position = 6 * self.d_model + 3 * hk + 3 * gk + 2 * h * length + 4 * f
    kept = self.num_layers * (self.d_model if self.remat == "full" else per_position)
    rebuilt = per_position if self.remat == "full" else 0.0
    return 4.0 * rows * length * (kept + rebuilt + 2 * h * length)

  def working_set_bytes(
    self, rows: float, prompt_length: int, response_length: int, model_split: int
  ) -> float:
    """Float32 activations of one layer of a forward-only pass over L = Li + Lt - 1 positions
    (`response_length` 0: the sampler's prefill of Li - 1): 3 H*L + 2E + F per position (three
    copies of the attention scores, the residual stream and its normalised copy, one MLP
    hidden), as `T5Config.working_set_bytes` counts the encoder's."""
    length = max(prompt_length + response_length - 1, 1)
    h, f = self.num_heads / model_split, self.d_ff / model_split
    return 4.0 * rows * length * (3 * h * length + 2 * self.d_model + f)

  def kv_cache_bytes(
    self, rows: float, prompt_length: int, response_length: int, model_split: int
  ) -> float:
    """The sampler's cache: keys and values of every layer over the prompt and the response,
    G kv heads, in the compute dtype."""
    width = 4.0 if self.dtype == "float32" else 2.0
    return (
      width
      * 2
      * self.num_layers
      * rows
      * (prompt_length + response_length)
      * self.num_kv_heads
      * self.d_kv
      / model_split
    )


# What the Qwen2.5 sizes share: vocabulary, 2 kv heads, RoPE base, tied embeddings, qkv biases.
_QWEN25 = dict(
  vocab_size=151936, num_kv_heads=2, rope_theta=1000000.0, tie_embeddings=True, qkv_bias=True
)
_SIZES = {
  # CPU-sized (a few hundred thousand parameters at vocab 64): the tiny T5's widths.
  "tiny": dict(
    vocab_size=128, d_model=64, num_heads=4, num_kv_heads=2, d_kv=16, d_ff=128, num_layers=4
  ),
  # The public Qwen2.5-0.5B, -1.5B and -3B dimensions (`hf_decoder` reads their checkpoints).
  "0.5b": dict(**_QWEN25, d_model=896, num_heads=14, d_kv=64, d_ff=4864, num_layers=24),
  "1.5b": dict(**_QWEN25, d_model=1536, num_heads=12, d_kv=128, d_ff=8960, num_layers=28),
  "3b": dict(**_QWEN25, d_model=2048, num_heads=16, d_kv=128, d_ff=11008, num_layers=36),
}

DECODER_SIZES = tuple(_SIZES)


def decoder_config(size: str, **overrides) -> DecoderConfig:
  """The named decoder size (`tiny`, `0.5b`, `1.5b`, `3b`), with field overrides."""
  if size not in _SIZES:
    raise ValueError(f"Unknown decoder size {size!r}; expected one of {DECODER_SIZES}.")
  return DecoderConfig(**{**_SIZES[size], **overrides})
