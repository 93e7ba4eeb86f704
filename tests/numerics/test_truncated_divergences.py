"""The truncated teacher (`loss.teacher_top_k`) against a float64 numpy brute force.

The brute force keeps the reference's K most probable tokens per position, builds the K-class
(renormalised) or K + 1-class (tail bucket) distributions of both sides from full softmaxes,
and sums p log(p / q) directly.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax, rel_entr

from th_distill import divergences as D

V = 11
SHAPE = (3, 5, V)


def _brute(name, ref, student, k, mode, temperature, beta=0.5):
  """Per-position divergence [..] in float64 of the truncated reference against the student."""
  log_p = log_softmax(ref.astype(np.float64) / temperature, axis=-1)
  log_q = log_softmax(student.astype(np.float64) / temperature, axis=-1)
  order = np.argsort(-log_p, axis=-1, kind="stable")
  top, rest = order[..., :k], order[..., k:]
  p, q = np.exp(np.take_along_axis(log_p, top, -1)), np.exp(np.take_along_axis(log_q, top, -1))
  if mode == "bucket":  # the tail summed over the other tokens (empty when k = V)
    p = np.concatenate([p, np.exp(np.take_along_axis(log_p, rest, -1)).sum(-1)[..., None]], -1)
    q = np.concatenate([q, np.exp(np.take_along_axis(log_q, rest, -1)).sum(-1)[..., None]], -1)
  else:
    p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
  kl = lambda a, b: rel_entr(a, b).sum(-1)  # noqa: E731
  if name == "fkl":
    return kl(p, q)
  if name == "rkl":
    return kl(q, p)
  m = beta * p + (1 - beta) * q
  return beta * kl(p, m) + (1 - beta) * kl(q, m)


@functools.cache
def _truncated(name, k, mode, temperature):
  def value(ref, student):
    values, indices, tail = D.top_k_log_probs(ref, k, temperature)
    return D.truncated_divergence(
      name, values, indices, tail, student, mode=mode, temperature=temperature
    )

  grad = jax.grad(lambda ref, student: jnp.sum(value(ref, student)), argnums=1)
  return jax.jit(value), jax.jit(grad)


@pytest.mark.parametrize("mode", D.TAILS)
@pytest.mark.parametrize("name", ("fkl", "rkl", "jsd"))
@pytest.mark.parametrize("k", (1, 4, V))
def test_matches_float64_brute_force(name, k, mode):
  rng = np.random.default_rng([k, len(name), len(mode)])
  ref = rng.normal(size=SHAPE).astype(np.float32) * 2.0
  student = rng.normal(size=SHAPE).astype(np.float32) * 2.0
  value, grad = _truncated(name, k, mode, 1.5)
  got = np.asarray(value(ref, student))
  want = _brute(name, ref, student, k, mode, 1.5)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
  assert np.all(np.isfinite(np.asarray(grad(ref, student))))


def test_full_vocabulary_equals_the_untruncated_divergence():
  """K = V: renormalised and bucketed (an empty tail on both sides) equal the plain divergence."""
  rng = np.random.default_rng(3)
  ref, student = (rng.normal(size=SHAPE).astype(np.float32) for _ in range(2))
  full = np.asarray(D.fkl(ref, student))
  for mode in D.TAILS:
    values, indices, tail = D.top_k_log_probs(ref, V)
    assert np.all(np.isneginf(np.asarray(tail)))
    got = D.truncated_divergence("fkl", values, indices, tail, student, mode=mode)
    np.testing.assert_allclose(np.asarray(got), full, rtol=1e-5, atol=1e-6)


def test_top_k_log_probs_are_the_largest_with_their_tail():
  rng = np.random.default_rng(4)
  ref = rng.normal(size=SHAPE).astype(np.float32)
  values, indices, tail = (np.asarray(x) for x in D.top_k_log_probs(ref, 3))
  log_p = log_softmax(ref.astype(np.float64), axis=-1)
  np.testing.assert_allclose(values, np.sort(log_p, -1)[..., ::-1][..., :3], rtol=1e-5)
  np.testing.assert_array_equal(np.take_along_axis(log_p, indices, -1).argsort(-1)[..., 0], 2)
  outside = np.sort(np.exp(log_p), -1)[..., :-3].sum(-1)
  np.testing.assert_allclose(np.exp(tail), outside, rtol=1e-5)


def test_a_student_equal_to_the_teacher_has_zero_truncated_divergence():
  ref = np.random.default_rng(5).normal(size=SHAPE).astype(np.float32)
  for mode in D.TAILS:
    values, indices, tail = D.top_k_log_probs(ref, 4)
    got = D.truncated_divergence("fkl", values, indices, tail, ref, mode=mode)
    np.testing.assert_allclose(np.asarray(got), 0.0, atol=1e-6)


def test_unknown_tail_is_refused():
  ref = np.zeros(SHAPE, np.float32)
  values, indices, tail = D.top_k_log_probs(ref, 2)
  with pytest.raises(ValueError, match="tail mode"):
    D.truncated_divergence("fkl", values, indices, tail, ref, mode="drop")
