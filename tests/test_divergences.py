"""Divergences against float64 numpy brute force, and their properties."""

import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.special import log_softmax as np_log_softmax

from th_distill import divergences as D


def _np_kl(log_p, log_q):
  p = np.exp(log_p)
  terms = np.where(p > 0, p * (log_p - np.where(p > 0, log_q, 0.0)), 0.0)
  return terms.sum(-1)


def _np_reference(ref_logits, student_logits, beta=0.5, temperature=1.0):
  """Brute force in float64: fkl, rkl, jsd_beta."""
  log_p = np_log_softmax(np.float64(ref_logits) / temperature, axis=-1)
  log_q = np_log_softmax(np.float64(student_logits) / temperature, axis=-1)
  m = beta * np.exp(log_p) + (1 - beta) * np.exp(log_q)
  log_m = np.log(m)
  return (_np_kl(log_p, log_q), _np_kl(log_q, log_p),
          beta * _np_kl(log_p, log_m) + (1 - beta) * _np_kl(log_q, log_m))


@pytest.mark.parametrize("shape", [(7,), (3, 11), (2, 5, 32)])
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_matches_float64_brute_force(shape, beta, temperature):
  rng = np.random.default_rng(hash((shape, beta, temperature)) % 2**32)
  p, q = rng.normal(size=shape) * 3, rng.normal(size=shape) * 3
  fkl, rkl, jsd = _np_reference(p, q, beta, temperature)
  np.testing.assert_allclose(D.fkl(p, q, temperature), fkl, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(D.rkl(p, q, temperature), rkl, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(D.jsd(p, q, beta, temperature), jsd, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(D.jsd(p, q, beta, temperature, normalized=True),
                             jsd / (beta * (1 - beta)), rtol=1e-4, atol=1e-6)
  assert D.fkl(p, q).dtype == jnp.float32 and D.fkl(p, q).shape == shape[:-1]


def test_all_divergences_equals_the_single_functions():
  rng = np.random.default_rng(0)
  p, q = rng.normal(size=(4, 6, 20)), rng.normal(size=(4, 6, 20))
  out = D.all_divergences(jnp.asarray(p, jnp.bfloat16), q)
  p = np.asarray(jnp.asarray(p, jnp.bfloat16), np.float32)
  np.testing.assert_allclose(out["fkl"], D.fkl(p, q), rtol=1e-6)
  np.testing.assert_allclose(out["rkl"], D.rkl(p, q), rtol=1e-6)
  np.testing.assert_allclose(out["jsd"], D.jsd(p, q), rtol=1e-6)


logits_pairs = st.integers(2, 12).flatmap(lambda v: st.tuples(
    hnp.arrays(np.float32, (3, v), elements=st.floats(-30, 30, width=32)),
    hnp.arrays(np.float32, (3, v), elements=st.floats(-30, 30, width=32))))


@settings(max_examples=60, deadline=None)
@given(logits_pairs, st.floats(0.01, 0.99))
def test_properties(pair, beta):
  p, q = pair
  for value in (D.fkl(p, q), D.rkl(p, q), D.jsd(p, q, beta),
                D.jsd(p, q, beta, normalized=True)):
    assert np.all(np.isfinite(value)) and np.all(value >= 0)
  assert np.all(D.jsd(p, q) <= math.log(2) + 1e-6)
  np.testing.assert_allclose(D.jsd(p, q), D.jsd(q, p), rtol=1e-4, atol=1e-6)  # symmetric at 0.5
  for div in (D.fkl, D.rkl, D.jsd):
    np.testing.assert_allclose(div(p, p), 0.0, atol=1e-6)


def test_beta_limits_of_the_normalised_jsd():
  rng = np.random.default_rng(1)
  p, q = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))
  # JSD_b / (b (1 - b)) = fkl + O(b) near 0 and rkl + O(1 - b) near 1.
  np.testing.assert_allclose(D.jsd(p, q, 1e-4, normalized=True), D.fkl(p, q), rtol=2e-3)
  np.testing.assert_allclose(D.jsd(p, q, 1 - 1e-4, normalized=True), D.rkl(p, q), rtol=2e-3)
  np.testing.assert_array_equal(D.jsd(p, q, 0.0, normalized=True), D.fkl(p, q))
  np.testing.assert_array_equal(D.jsd(p, q, 1.0, normalized=True), D.rkl(p, q))
  np.testing.assert_array_equal(D.jsd(p, q, 0.0), 0.0)
  with pytest.raises(ValueError, match="beta"):
    D.jsd(p, q, 1.5)
  with pytest.raises(ValueError, match="temperature"):
    D.fkl(p, q, temperature=0.0)
  with pytest.raises(ValueError, match="fkl"):
    D.get("kl")


def test_minus_inf_and_huge_logits_stay_finite():
  p = np.array([[0.0, -np.inf, 1.0, 2.0], [3.0, 1.0, -np.inf, -np.inf]], np.float32)
  q = np.array([[1.0, 0.5, -np.inf, 0.0], [0.0, 1.0, 2.0, -np.inf]], np.float32)
  # p puts no mass where it is -inf: those terms are 0 in fkl; fkl is inf only if q lacks
  # support where p has it (row 0, token 2), which is the true value.
  fkl = D.fkl(p, q)
  assert np.isinf(fkl[0]) and np.isfinite(fkl[1])
  assert np.all(np.isfinite(D.jsd(p, q))) and np.all(np.isfinite(D.fkl(p, p)))
  ref = _np_reference(p[1], q[1])
  np.testing.assert_allclose(fkl[1], ref[0], rtol=1e-5)
  huge = np.array([[1e30, -1e30, 0.0], [1e4, 2e4, -3e4]], np.float32)
  for div in (D.fkl, D.rkl, D.jsd):
    assert np.all(np.isfinite(div(huge, huge[::-1])))


def test_gradients_are_finite_and_exact():
  rng = np.random.default_rng(2)
  p = rng.normal(size=(4, 9)).astype(np.float32)
  p[:, 3] = -np.inf  # a masked vocabulary entry in the reference
  q = rng.normal(size=(4, 9)).astype(np.float32)
  for div in (D.fkl, D.jsd):
    grad = jax.grad(lambda s: jnp.sum(div(p, s)))(q)
    assert np.all(np.isfinite(grad)), div.__name__
  # rkl = KL(q || p) is finite when the *student* masks a token the reference keeps.
  grad = jax.grad(lambda s: jnp.sum(D.rkl(q, s)))(p)
  assert np.all(np.isfinite(grad)) and np.all(grad[:, 3] == 0)
  # d fkl / d student_logits = softmax(q) - softmax(p).
  grad = jax.grad(lambda s: jnp.sum(D.fkl(p, s)))(q)
  np.testing.assert_allclose(grad, jax.nn.softmax(q) - jax.nn.softmax(p), atol=1e-6)


def test_reductions_ignore_padding_even_if_nan():
  values = np.array([[1.0, 2.0, np.nan], [4.0, np.inf, np.nan]], np.float32)
  mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  assert float(D.per_token_mean(values, mask)) == pytest.approx(7.0 / 3.0)
  assert float(D.per_sequence_mean(values, mask)) == pytest.approx((3.0 + 4.0) / 2)
  assert float(D.per_token_mean(values, np.zeros_like(mask))) == 0.0


def test_token_divergence_dispatch():
  rng = np.random.default_rng(3)
  p, q = rng.normal(size=(2, 8)), rng.normal(size=(2, 8))
  np.testing.assert_array_equal(D.token_divergence("rkl", p, q), D.rkl(p, q))
  np.testing.assert_array_equal(D.token_divergence("jsd", p, q, beta=0.3, normalized=True),
                                D.jsd(p, q, 0.3, normalized=True))
