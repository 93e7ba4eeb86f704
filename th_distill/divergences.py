"""Token-level divergences between a reference model p (teacher or oracle) and the student q.

Every divergence takes logits `ref_logits`, `student_logits` of shape `[..., V]` (any float
dtype, broadcastable), divides both by `temperature` (> 0), computes in float32 from log-softmax
(never softmax then log), and returns one float32 value per position, shape `[...]`.

- `fkl`: forward KL, KL(p || q) = sum_v p (log p - log q): the usual distillation loss.
- `rkl`: reverse KL, KL(q || p).
- `jsd(beta)`: m = beta p + (1 - beta) q; JSD_beta = beta KL(p || m) + (1 - beta) KL(q || m), the
  GKD / TRL convention: beta -> 0 is the forward-KL end, beta -> 1 the reverse-KL end, and
  0 <= JSD_beta <= h(beta) (the binary entropy, ln 2 at beta = 0.5). `normalized=True` returns
  JSD_beta / (beta (1 - beta)), which tends to fkl as beta -> 0 and to rkl as beta -> 1; beta = 0
  and beta = 1 return fkl and rkl exactly, so the normalised loss is continuous in beta.

Conventions:
- Terms where the left distribution of a KL has zero probability contribute 0 (xlogy), so a
  logit of -inf (a masked vocabulary entry) gives finite values and finite gradients whenever
  the divergence itself is finite; a row must not be all -inf. KL(p || q) is +inf when q is 0
  where p is not (e.g. fkl with -inf in the student only where the reference has mass): that is
  the true value. JSD is always finite.
- log m is never formed from m: KL(a || m) = -sum_{a>0} a log(w + (1 - w) b / a), with
  log(w + (1 - w) b / a) = logaddexp(log w, log(1 - w) + log b - log a), which keeps relative
  precision as beta -> 0 or 1 and needs no log(0) at the endpoints (handled statically).
- Non-finite inputs are never hidden: a NaN or +inf logit in a row makes the divergences (and
  the entropy) at that position NaN, never 0 or another finite number.
- Float32 rounding can leave a divergence a hair below 0 (e.g. when p ~= q); such values are
  reported as exactly 0, with the gradient left untouched.

Argument order and temperature, against the libraries a reader may come from (the order here
is always the reference, then the student, and both are logits):
- optax: `optax.kl_divergence(log_predictions, targets)` is KL(targets || predictions) from the
  student's log-probabilities first and the teacher's probabilities second, so
  `fkl(ref, student, T)` = `optax.kl_divergence(log_softmax(student / T), softmax(ref / T))`,
  and `rkl(ref, student, T)` = `optax.kl_divergence(log_softmax(ref / T), softmax(student / T))`.
- TRL: `GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, beta=beta,
  temperature=T)` takes the student first; per position, for 0 < beta < 1, it is
  `jsd(ref, student, beta, T)` (the same mixture m = beta p + (1 - beta) q and weights); at
  beta = 0 and 1 it switches to the forward and reverse KL, which here is
  `jsd(..., normalized=True)` (plain JSD_beta is 0 at both ends). Its reduction with labels,
  'batchmean', is `per_token_mean`.
- `temperature` divides both models' logits before the log-softmax, as in both libraries, and
  nothing multiplies the result by T^2 (Hinton et al.'s gradient scale for soft targets):
  multiply the loss by T^2 where that scale is wanted. `tests/numerics/test_divergences.py`
  checks these identities against optax and against TRL's formula computed with torch.

Truncated teacher (offline top-k logit caches, top-k teacher log-probs on-policy): the teacher
is kept as its top K log-probabilities per position (`top_k_log_probs`: values, indices and the
log of the mass outside them) and `truncated_divergence` compares it with the student on those
K classes, both renormalised over them (`tail='renormalize'`), or on K + 1 classes whose last is
the rest of the vocabulary (`'bucket'`: the teacher's stored tail mass against the student's
mass outside the teacher's top K).

Masked reductions over a batch of responses (`values`, `mask`: [B, L]): `per_token_mean` (mean
over every valid token) and `per_sequence_mean` (sum over each response, then mean over responses).
Padded positions (mask == 0) never count, even if `values` holds NaN or inf there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

_FLOAT32_TINY = float(jnp.finfo(jnp.float32).tiny)


def _log_probs(logits: Array, temperature: float) -> Array:
  """Float32 log-softmax of `logits / temperature` over the last axis: [..., V] -> [..., V]."""
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}.")
  return jax.nn.log_softmax(jnp.asarray(logits).astype(jnp.float32) / temperature, axis=-1)


def _clip_rounding(value: Array) -> Array:
  """`value` with tiny negative rounding set to 0, keeping the gradient of `value`."""
  return jnp.where(value < 0, value - jax.lax.stop_gradient(value), value)


def _support(log_probs: Array) -> Array:
  """Entries with non-zero probability, NaN included (so that NaN propagates)."""
  return log_probs != -jnp.inf


def _kl(log_a: Array, log_b: Array) -> Array:
  """KL(a || b) = sum_{a>0} a (log a - log b) from log-probabilities: [..., V] -> [...]."""
  support = _support(log_a)
  # Double `where`: masked entries see finite inputs, so no inf - inf NaN reaches gradients.
  log_a = jnp.where(support, log_a, 0.0)
  log_b = jnp.where(support, log_b, 0.0)
  terms = jnp.where(support, jnp.exp(log_a) * (log_a - log_b), 0.0)
  return _clip_rounding(jnp.sum(terms, axis=-1))


def _kl_to_mixture(log_a: Array, log_b: Array, w: float, one_minus_w: float) -> Array:
  """KL(a || m), m = w a + (1 - w) b, 0 < w < 1, from log-probabilities: [..., V] -> [...].

  Takes w and 1 - w separately, so neither is rounded through the other. With d = log b - log a,
  log(m / a) = logaddexp(log w, log(1 - w) + d); where b = 0 it is exactly log w (the `where`s
  keep -inf out of `logaddexp`, whose gradient at -inf is not 0), and where d = 0 it is exactly
  0 (as (1 - w) d, which has the right gradient), so equal inputs give exactly 0.
  """
  support = _support(log_a)
  both = support & _support(log_b)
  log_a = jnp.where(support, log_a, 0.0)
  d = jnp.where(both, log_b - log_a, 0.0)
  log_w, log_1mw = math.log(w), math.log(one_minus_w)
  log_m_over_a = jnp.where(d == 0, one_minus_w * d, jnp.logaddexp(log_w, log_1mw + d))
  log_m_over_a = jnp.where(both, log_m_over_a, log_w)
  terms = jnp.where(support, jnp.exp(log_a) * log_m_over_a, 0.0)
  return _clip_rounding(-jnp.sum(terms, axis=-1))


def fkl(ref_logits: Array, student_logits: Array, temperature: float = 1.0) -> Array:
  """Forward KL(p || q) per position: [..., V] x [..., V] -> [...] float32."""
  return _kl(_log_probs(ref_logits, temperature), _log_probs(student_logits, temperature))


def rkl(ref_logits: Array, student_logits: Array, temperature: float = 1.0) -> Array:
  """Reverse KL(q || p) per position: [..., V] x [..., V] -> [...] float32."""
  return _kl(_log_probs(student_logits, temperature), _log_probs(ref_logits, temperature))


def _jsd(log_p: Array, log_q: Array, beta: float, normalized: bool) -> Array:
  """JSD_beta (or JSD_beta / (beta (1 - beta))) for 0 < beta < 1 from log-probabilities."""
  kl_p = _kl_to_mixture(log_p, log_q, beta, 1.0 - beta)
  kl_q = _kl_to_mixture(log_q, log_p, 1.0 - beta, beta)
  if normalized:
    return kl_p / (1.0 - beta) + kl_q / beta
  return beta * kl_p + (1.0 - beta) * kl_q


def jsd(
  ref_logits: Array,
  student_logits: Array,
  beta: float = 0.5,
  temperature: float = 1.0,
  normalized: bool = False,
) -> Array:
  """Generalised Jensen-Shannon divergence per position: [..., V] x [..., V] -> [...] float32.

  `beta` is a static Python float in [0, 1] (the weight of p in m). Plain JSD_beta is 0 at both
  ends; the normalised form, JSD_beta / (beta (1 - beta)), is fkl at beta = 0 and rkl at 1.
  A beta below float32's smallest normal number (~1.2e-38) is treated as 0.
  """
  beta = float(beta)
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"beta must be in [0, 1], got {beta}.")
  if beta < _FLOAT32_TINY:  # float32 cannot divide by it; JSD_beta / beta(1-beta) is fkl here
    beta = 0.0
  log_p, log_q = _log_probs(ref_logits, temperature), _log_probs(student_logits, temperature)
  if beta in (0.0, 1.0):
    if normalized:
      return _kl(log_p, log_q) if beta == 0.0 else _kl(log_q, log_p)
    nan = jnp.isnan(log_p).any(axis=-1) | jnp.isnan(log_q).any(axis=-1)
    return jnp.where(nan, jnp.nan, 0.0).astype(jnp.float32)
  return _jsd(log_p, log_q, beta, normalized)


DIVERGENCES: dict[str, Callable[..., Array]] = {"fkl": fkl, "rkl": rkl, "jsd": jsd}


def get(name: str) -> Callable[..., Array]:
  """The divergence function called `name`, one of `DIVERGENCES` (fkl, rkl, jsd)."""
  if name not in DIVERGENCES:
    raise ValueError(f"Unknown divergence {name!r}; expected one of {tuple(DIVERGENCES)}.")
  return DIVERGENCES[name]


def token_divergence(
  name: str,
  ref_logits: Array,
  student_logits: Array,
  *,
  beta: float = 0.5,
  temperature: float = 1.0,
  normalized: bool = False,
) -> Array:
  """Divergence `name` per position: [..., V] x [..., V] -> [...] float32.

  `beta` and `normalized` are used by jsd only.
  """
  fn = get(name)
  if fn is jsd:
    return jsd(ref_logits, student_logits, beta, temperature, normalized)
  return fn(ref_logits, student_logits, temperature)


def all_divergences(ref_logits: Array, student_logits: Array) -> dict[str, Array]:
  """{'fkl', 'rkl', 'jsd'} per position ([..., V] -> [...] float32, temperature 1), sharing one
  log-softmax per side; 'jsd' is the plain beta = 0.5 metric in nats, in [0, ln 2]."""
  log_p, log_q = _log_probs(ref_logits, 1.0), _log_probs(student_logits, 1.0)
  return {
    "fkl": _kl(log_p, log_q),
    "rkl": _kl(log_q, log_p),
    "jsd": _jsd(log_p, log_q, 0.5, normalized=False),
  }


TAILS = ("renormalize", "bucket")


def _outside(log_probs: Array, indices: Array) -> Array:
  """log of the mass outside `indices` [..., K] of `log_probs` [..., V]: [...] (-inf when
  the K entries hold all of it), summed over the other entries (no 1 - p cancellation)."""
  flat = log_probs.reshape(-1, log_probs.shape[-1])
  rows = jnp.arange(flat.shape[0])[:, None]
  inside = jnp.zeros(flat.shape, bool).at[rows, indices.reshape(-1, indices.shape[-1])].set(True)
  rest = jnp.where(inside, -jnp.inf, flat)
  return jax.nn.logsumexp(rest, axis=-1).reshape(log_probs.shape[:-1])


def top_k_log_probs(ref_logits: Array, k: int, temperature: float = 1.0) -> tuple[Array, ...]:
  """The reference's top `k` log-probabilities at `temperature`: `ref_logits` [..., V] ->
  (values [..., K] float32 in descending order, indices [..., K] int32, tail [...] float32: the
  log of the probability outside the top K, -inf when K = V)."""
  log_p = _log_probs(ref_logits, temperature)
  values, indices = jax.lax.top_k(log_p, k)
  return values, indices.astype(jnp.int32), _outside(log_p, indices)


def truncated_divergence(
  name: str,
  top_values: Array,
  top_indices: Array,
  tail: Array,
  student_logits: Array,
  *,
  mode: str = "renormalize",
  beta: float = 0.5,
  temperature: float = 1.0,
  normalized: bool = False,
) -> Array:
  """Divergence `name` of a truncated reference against the student per position: the
  reference's `top_k_log_probs` (`top_values`, `top_indices` [..., K], `tail` [...]) and
  `student_logits` [..., V] -> [...] float32.

  `mode='renormalize'`: both distributions restricted to the reference's K classes and
  renormalised there; `'bucket'`: K + 1 classes, the last holding each side's probability
  outside those K. The student's logits are divided by `temperature` (the reference's were
  when its top K were taken); `beta`, `normalized` as for `jsd`.
  """
  if mode not in TAILS:
    raise ValueError(f"Unknown tail mode {mode!r}; expected one of {TAILS}.")
  log_q = _log_probs(student_logits, temperature)
  ref, student = top_values, jnp.take_along_axis(log_q, top_indices, axis=-1)
  if mode == "bucket":
    ref = jnp.concatenate([ref, tail[..., None]], axis=-1)
    student = jnp.concatenate([student, _outside(log_q, top_indices)[..., None]], axis=-1)
  return token_divergence(name, ref, student, beta=beta, normalized=normalized)


def entropy(logits: Array) -> Array:
  """Next-token entropy in nats, -sum_v q log q over the last axis: [..., V] -> [...] float32
  (masked entries of -inf contribute 0)."""
  log_q = _log_probs(logits, 1.0)
  return -jnp.sum(jnp.where(_support(log_q), jnp.exp(log_q) * log_q, 0.0), axis=-1)


def masked_sum(values: Array, mask: Array, axis: int | None = None) -> Array:
  """sum(values * mask) over `axis` (None: all) in float32; positions with mask == 0 are skipped
  (not multiplied), so NaN or inf there never leaks in."""
  mask = jnp.asarray(mask).astype(jnp.float32)
  return jnp.sum(
    jnp.where(mask != 0, jnp.asarray(values).astype(jnp.float32) * mask, 0.0), axis=axis
  )


def per_token_mean(values: Array, mask: Array) -> Array:
  """Masked mean over every valid token of the batch: values, mask [B, L] -> float32 scalar.

  masked_sum(values, mask) / max(sum(mask), 1). An all-padding batch gives 0.
  """
  return masked_sum(values, mask) / jnp.maximum(jnp.sum(jnp.asarray(mask, jnp.float32)), 1.0)


def per_sequence_mean(values: Array, mask: Array) -> Array:
  """Mean over sequences of each sequence's masked sum: values, mask [B, L] -> float32 scalar.

  mean_b sum_l values[b, l] * mask[b, l], skipping (not multiplying) positions with mask == 0.
  """
  return jnp.mean(masked_sum(values, mask, axis=-1))
