"""FLOP counts of forward passes, training steps and generation, from the shapes alone.

A model's own counts come from its config (`th_distill.models.interface.ModelConfig`:
`forward_flops`, `generation_flops`; T5's formulas are on `T5Config`, the decoder-only family's on
`DecoderConfig`). A matmul of [m, n] x [n, p] counts 2 m n p FLOPs; element-wise work (norms,
softmax, GELU, divergences) is not counted. A training step = 3 x forward (backward = 2 x
forward). A distillation step (student trained, teacher frozen) = 3 x student forward + teacher
forward (+ the oracle's forward when the step logs golden metrics, as the pipeline's does).
"""

from __future__ import annotations

from th_distill.models.interface import ModelConfig


def forward_flops(cfg: ModelConfig, input_length: int, target_length: int) -> float:
  """FLOPs of one teacher-forced forward pass, per example."""
  return cfg.forward_flops(input_length, target_length)


def train_flops(cfg: ModelConfig, input_length: int, target_length: int) -> float:
  """FLOPs of one forward + backward pass, per example (3 x forward)."""
  return 3.0 * forward_flops(cfg, input_length, target_length)


def distill_flops(
  student: ModelConfig,
  teacher: ModelConfig,
  input_length: int,
  target_length: int,
  oracle: ModelConfig | None = None,
) -> float:
  """FLOPs of one distillation step, per example: student forward + backward, teacher forward,
  and the `oracle`'s forward if given (the golden metrics of `train.distill_step`)."""
  frozen = [teacher] + ([oracle] if oracle is not None else [])
  return train_flops(student, input_length, target_length) + sum(
    forward_flops(cfg, input_length, target_length) for cfg in frozen
  )


def generation_flops(cfg: ModelConfig, input_length: int, target_length: int) -> float:
  """FLOPs of sampling `target_length` tokens after a prompt of `input_length`, per example."""
  return cfg.generation_flops(input_length, target_length)
