"""The synthetic oracle: a randomly initialised T5 that *is* the ground-truth distribution.

Random T5 weights give near-uniform next-token distributions. To make the oracle a structured,
learnable ground truth with moderate entropy, every weight matrix is first multiplied by
`weight_scale` (sharper, more input-dependent features), then the output layer is rescaled by a
factor found by bisection so that the mean next-token entropy on the oracle's own samples equals
`target_entropy` nats.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from th_distill.data.batch import Batch, PromptSet
from th_distill.models.interface import LanguageModel
from th_distill.sampling import SampleFn
from th_distill.training.teacher_forcing import forward

# Bisection steps of `calibrate_oracle`; it samples once per step and once at the chosen scale.
CALIBRATION_ITERATIONS = 14


@functools.partial(jax.jit, static_argnames=("model",))
def mean_entropy(model: LanguageModel, params: Any, batch: Batch) -> jax.Array:
  """Mean next-token entropy (nats) of `model` over the valid positions of `batch`."""
  logp = jax.nn.log_softmax(forward(model, params, batch))
  entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
  return jnp.sum(entropy * batch.mask) / jnp.maximum(jnp.sum(batch.mask), 1.0)


def _scale_matrices(params: Any, factor: float) -> Any:
  """Multiplies every parameter with 2+ dims (all but the norm scales) by `factor`."""
  return jax.tree_util.tree_map(lambda x: x * factor if x.ndim >= 2 else x, params)


def with_logit_scale(params: Any, scale: float) -> Any:
  """`params` with the output layer (`logits_kernel`: T5's, an untied decoder's) times `scale`."""
  if "logits_kernel" not in params:
    raise ValueError(
      "The synthetic oracle scales its output layer `logits_kernel`, which this model lacks "
      "(a decoder with tie_embeddings = True): give oracle.model tie_embeddings = False."
    )
  return {**params, "logits_kernel": params["logits_kernel"] * scale}


def calibrate_oracle(
  model: LanguageModel,
  params: Any,
  sample: SampleFn,
  prompts: PromptSet,
  rng: jax.Array,
  target_entropy: float,
  weight_scale: float = 1.0,
  iterations: int = CALIBRATION_ITERATIONS,
) -> tuple[Any, dict[str, float]]:
  """Scales `params` into an oracle whose own samples have `target_entropy` nats per token.

  Bisection on log(logit scale) in [1/64, 64]: entropy falls as the scale grows. Returns the
  oracle parameters and {'logit_scale', 'entropy'} (the entropy measured at the chosen scale).
  """
  max_entropy = float(np.log(model.cfg.vocab_size))
  if not 0.0 < target_entropy < max_entropy:
    raise ValueError(
      f"oracle.target_entropy must be in (0, ln(vocab) = {max_entropy:.3f}), got {target_entropy}."
    )
  base = _scale_matrices(params, weight_scale)

  def entropy_at(log_scale: float) -> float:
    scaled = with_logit_scale(base, float(np.exp(log_scale)))
    tokens, mask = sample(scaled, prompts.tokens, prompts.mask, rng)
    batch = Batch(prompts.tokens, prompts.mask, tokens, mask)
    return float(mean_entropy(model, scaled, batch))

  low, high = np.log(1 / 64), np.log(64.0)
  for _ in range(iterations):
    middle = 0.5 * (low + high)
    if entropy_at(middle) > target_entropy:
      low = middle
    else:
      high = middle
  log_scale = 0.5 * (low + high)
  return with_logit_scale(base, float(np.exp(log_scale))), {
    "logit_scale": float(np.exp(log_scale)),
    "entropy": entropy_at(log_scale),
  }
