"""FLOP counts of T5 forward passes, training steps and generation, from the shapes alone.

A matmul of [m, n] x [n, p] counts 2 m n p FLOPs; element-wise work (norms, softmax, GELU,
divergences) is not counted. With E = d_model, A = heads x d_kv, F = d_ff, V = vocab, per example
with Li input and Lt target tokens:

  encoder layer:  Li (8 E A + 6 E F) + 4 Li^2 A                   (q, k, v, o; MLP; scores, mix)
  decoder layer:  Lt (8 E A + 6 E F) + 4 Lt^2 A                   (self-attention, MLP)
                  + Lt 4 E A + Li 4 E A + 4 Lt Li A               (cross-attention q, o; k, v)
  output layer:   2 Lt E V
  forward = sum over layers + output; a training step = 3 x forward (backward = 2 x forward).

A distillation step (student trained, teacher frozen) = 3 x student forward + teacher forward
(+ the oracle's forward when the step logs golden metrics, as the pipeline's does).

Generation of Lt tokens, per example: the encoder once, the cross-attention keys and values once
(Li 4 E A per decoder layer), then per token the same projections and MLP as a forward position
(Lt (8 E A + 6 E F) + Lt 4 E A per layer) and the output layer (2 E V); token t (from 0) attends to
t + 1 cached keys and Li encoder positions, 4 A per key, so scores and mixing add
4 A (Lt (Lt + 1) / 2 + Lt Li) per layer. This is the work intrinsic to the model: an
implementation that attends over a longer (static) cache does more than it is credited with.
"""

from __future__ import annotations

from th_distill.models.config import T5Config


def forward_flops(cfg: T5Config, input_length: int, target_length: int) -> float:
  """FLOPs of one teacher-forced forward pass, per example."""
  e, a, f, v = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff, cfg.vocab_size
  li, lt = input_length, target_length
  encoder = cfg.num_encoder_layers * (li * (8 * e * a + 6 * e * f) + 4 * li * li * a)
  decoder = cfg.num_decoder_layers * (
    lt * (8 * e * a + 6 * e * f)
    + 4 * lt * lt * a
    + lt * 4 * e * a
    + li * 4 * e * a
    + 4 * lt * li * a
  )
  return float(encoder + decoder + 2 * lt * e * v)


def train_flops(cfg: T5Config, input_length: int, target_length: int) -> float:
  """FLOPs of one forward + backward pass, per example (3 x forward)."""
  return 3.0 * forward_flops(cfg, input_length, target_length)


def distill_flops(
  student: T5Config,
  teacher: T5Config,
  input_length: int,
  target_length: int,
  oracle: T5Config | None = None,
) -> float:
  """FLOPs of one distillation step, per example: student forward + backward, teacher forward,
  and the `oracle`'s forward if given (the golden metrics of `train.distill_step`)."""
  frozen = [teacher] + ([oracle] if oracle is not None else [])
  return train_flops(student, input_length, target_length) + sum(
    forward_flops(cfg, input_length, target_length) for cfg in frozen
  )


def generation_flops(cfg: T5Config, input_length: int, target_length: int) -> float:
  """FLOPs of encoding plus incremental decoding of `target_length` tokens, per example."""
  e, a, f, v = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff, cfg.vocab_size
  li, lt = input_length, target_length
  encoder = cfg.num_encoder_layers * (li * (8 * e * a + 6 * e * f) + 4 * li * li * a)
  per_token = cfg.num_decoder_layers * (8 * e * a + 6 * e * f + 4 * e * a) + 2 * e * v
  attention = cfg.num_decoder_layers * 4 * a * (lt * (lt + 1) // 2 + lt * li)
  cross_kv = cfg.num_decoder_layers * li * 4 * e * a
  return float(encoder + cross_kv + lt * per_token + attention)
