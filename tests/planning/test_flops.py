"""The FLOP formulas agree with XLA's own count of the compiled forward pass; generation and
distillation counts are consistent with it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from th_distill.models import T5, init_params, t5_config
from th_distill.planning.flops import distill_flops, forward_flops, generation_flops, train_flops


@pytest.mark.parametrize(
  "overrides, input_length, target_length",
  [(dict(), 16, 8), (dict(num_decoder_layers=3, d_ff=96), 24, 40)],
)
def test_forward_flops_match_xla_cost_analysis(overrides, input_length, target_length):
  cfg = t5_config("tiny", **overrides)
  model = T5(cfg)
  params = jax.eval_shape(lambda: nn.unbox(init_params(model, jax.random.PRNGKey(0))))
  forward = jax.jit(lambda p, a, m, b: model.apply({"params": p}, a, m, b))
  prompts = jnp.ones((2, input_length), jnp.int32)
  compiled = forward.lower(
    params, prompts, jnp.ones(prompts.shape, bool), jnp.ones((2, target_length), jnp.int32)
  ).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  # XLA also counts element-wise work (norms, softmax, GELU): a few percent more.
  ratio = cost["flops"] / 2 / forward_flops(cfg, input_length, target_length)
  assert 1.0 <= ratio < 1.08, ratio


def test_generation_and_distillation_counts():
  """Generation does a forward pass's work, with causal instead of full self-attention scores;
  a distillation step is the student's training step plus the teacher's forward pass."""
  student, teacher = t5_config("tiny"), t5_config("tiny", d_model=128, d_ff=256)
  li, lt, a = 16, 40, student.num_heads * student.d_kv
  masked_half = student.num_decoder_layers * 4 * a * (lt * lt - lt * (lt + 1) // 2)
  assert generation_flops(student, li, lt) == forward_flops(student, li, lt) - masked_half
  assert distill_flops(student, teacher, li, lt) == (
    train_flops(student, li, lt) + forward_flops(teacher, li, lt)
  )
