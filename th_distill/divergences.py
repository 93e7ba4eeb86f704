"""Token-level divergences between a reference model p (teacher or oracle) and the student q.

Every function takes logits `[..., V]` (any float dtype), computes in float32 with log-softmax
(never softmax then log), and returns `[...]` float32 (one value per token position).

- `fkl`: forward KL, KL(p || q) = sum_v p (log p - log q): the usual distillation loss.
- `rkl`: reverse KL, KL(q || p).
- `jsd(beta)`: m = beta p + (1 - beta) q; JSD_beta = beta KL(p || m) + (1 - beta) KL(q || m), the
  GKD / TRL convention: beta -> 0 is the forward-KL end, beta -> 1 the reverse-KL end.
  `normalized=True` returns JSD_beta / (beta (1 - beta)), which tends to fkl as beta -> 0 and to
  rkl as beta -> 1; beta = 0 and beta = 1 return fkl and rkl exactly, so the loss is continuous.

Terms with zero probability contribute 0 (xlogy convention), so logits of -inf (a masked
vocabulary entry) give finite values and finite gradients as long as a row is not all -inf.
Rounding can make a divergence a hair below 0; results are clipped at 0.

Reductions over a batch of responses (`values`, `mask`: [B, L]): `per_token_mean` (masked mean
over every valid token) and `per_sequence_mean` (masked sum per response, then mean over
responses). Padded positions never count, even if `values` holds NaN or inf there.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def _log_probs(logits: Array, temperature: float) -> Array:
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}.")
  return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def _kl(log_p: Array, log_q: Array) -> Array:
  """KL(p || q) from log-probabilities [..., V], with 0 * (anything) = 0 and safe gradients."""
  p = jnp.exp(log_p)
  support = p > 0
  # Double `where`: the unused branch sees finite inputs, so no NaN flows into gradients.
  diff = jnp.where(support, log_p, 0.0) - jnp.where(support, log_q, 0.0)
  return jnp.maximum(jnp.sum(jnp.where(support, p * diff, 0.0), axis=-1), 0.0)


def fkl(ref_logits: Array, student_logits: Array, temperature: float = 1.0) -> Array:
  """Forward KL(p || q) per position: [..., V] x [..., V] -> [...] float32."""
  return _kl(_log_probs(ref_logits, temperature), _log_probs(student_logits, temperature))


def rkl(ref_logits: Array, student_logits: Array, temperature: float = 1.0) -> Array:
  """Reverse KL(q || p) per position: [..., V] x [..., V] -> [...] float32."""
  return _kl(_log_probs(student_logits, temperature), _log_probs(ref_logits, temperature))


def _jsd_from_log_probs(log_p: Array, log_q: Array, beta: float) -> Array:
  log_m = jnp.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
  return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)


def jsd(ref_logits: Array, student_logits: Array, beta: float = 0.5, temperature: float = 1.0,
        normalized: bool = False) -> Array:
  """Generalised Jensen-Shannon divergence per position: [..., V] x [..., V] -> [...] float32.

  `beta` is a Python float in [0, 1]. Plain JSD_beta is 0 at both ends; the normalised form
  divides by beta (1 - beta) and equals fkl at beta = 0 and rkl at beta = 1.
  """
  beta = float(beta)
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"beta must be in [0, 1], got {beta}.")
  if beta in (0.0, 1.0):
    if not normalized:
      return jnp.zeros(jnp.broadcast_shapes(ref_logits.shape, student_logits.shape)[:-1],
                       jnp.float32)
    return (fkl if beta == 0.0 else rkl)(ref_logits, student_logits, temperature)
  value = _jsd_from_log_probs(_log_probs(ref_logits, temperature),
                              _log_probs(student_logits, temperature), beta)
  return value / (beta * (1.0 - beta)) if normalized else value


DIVERGENCES: dict[str, Callable[..., Array]] = {"fkl": fkl, "rkl": rkl, "jsd": jsd}


def get(name: str) -> Callable[..., Array]:
  """The divergence function called `name` (fkl, rkl or jsd)."""
  if name not in DIVERGENCES:
    raise ValueError(f"Unknown divergence {name!r}; expected one of {tuple(DIVERGENCES)}.")
  return DIVERGENCES[name]


def token_divergence(name: str, ref_logits: Array, student_logits: Array, *, beta: float = 0.5,
                     temperature: float = 1.0, normalized: bool = False) -> Array:
  """Dispatches to `name`; `beta` and `normalized` only matter for jsd. Returns [...]."""
  if name == "jsd":
    return jsd(ref_logits, student_logits, beta, temperature, normalized)
  return get(name)(ref_logits, student_logits, temperature)


def all_divergences(ref_logits: Array, student_logits: Array) -> dict[str, Array]:
  """{'fkl', 'rkl', 'jsd' (beta = 0.5, nats)} per position, sharing one log-softmax per side."""
  log_p, log_q = _log_probs(ref_logits, 1.0), _log_probs(student_logits, 1.0)
  return {"fkl": _kl(log_p, log_q), "rkl": _kl(log_q, log_p),
          "jsd": _jsd_from_log_probs(log_p, log_q, 0.5)}


def per_token_mean(values: Array, mask: Array) -> Array:
  """Masked mean over every valid position: values, mask [B, L] -> scalar."""
  valid = mask > 0
  return jnp.sum(jnp.where(valid, values, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def per_sequence_mean(values: Array, mask: Array) -> Array:
  """Mean over sequences of each sequence's masked sum: values, mask [B, L] -> scalar."""
  return jnp.mean(jnp.sum(jnp.where(mask > 0, values, 0.0), axis=-1))
