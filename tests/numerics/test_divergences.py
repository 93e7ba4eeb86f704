"""Divergences against float64 numpy brute force, their properties, gradients and reductions.

Compilation dominates the run time, so the property tests use one shape and call a few jitted
evaluators that compute every divergence at once (one compilation per static setting).
"""

import functools
import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax, rel_entr, softmax

from th_distill import divergences as D

LN2 = math.log(2.0)
NAMES = ("fkl", "rkl", "jsd")
SHAPE = (4, 7)  # of the property tests' logits
BETAS = (0.1, 0.5, 0.9)


def _evaluate(beta=0.5, temperature=1.0, grads=True):
  """Jitted (ref, student) -> {fkl, rkl, jsd (JSD_beta), njsd (normalised), and with `grads` the
  gradient of the sum of each w.r.t. the student logits ('grad_' + name)}."""
  return _jitted_evaluate(float(beta), float(temperature), bool(grads))


@functools.cache
def _jitted_evaluate(beta, temperature, grads):
  kwargs = {"fkl": {}, "rkl": {}, "jsd": {"beta": beta}, "njsd": {"beta": beta, "normalized": True}}

  def value(name, ref, student):
    return D.get(name[1:] if name == "njsd" else name)(
      ref, student, temperature=temperature, **kwargs[name]
    )

  def evaluate(ref, student):
    out = {name: value(name, ref, student) for name in kwargs}
    if grads:
      for name in kwargs:
        out["grad_" + name] = jax.grad(lambda s, n=name: jnp.sum(value(n, ref, s)))(student)
    return out

  return jax.jit(evaluate)


def _np_kl(log_a, log_b):
  """KL(a || b) in float64 from log-probabilities, xlogy convention (0 where a == 0)."""
  with np.errstate(invalid="ignore"):
    return np.sum(np.where(log_a > -np.inf, np.exp(log_a) * (log_a - log_b), 0.0), -1)


def _reference(ref_logits, student_logits, beta=0.5, temperature=1.0):
  """Brute force in float64: {'fkl', 'rkl', 'jsd' (JSD_beta)} per position."""
  with np.errstate(invalid="ignore"):
    log_p = log_softmax(np.float64(ref_logits) / temperature, axis=-1)
    log_q = log_softmax(np.float64(student_logits) / temperature, axis=-1)
  p, q = np.exp(log_p), np.exp(log_q)
  m = beta * p + (1 - beta) * q
  return {
    "fkl": _np_kl(log_p, log_q),
    "rkl": _np_kl(log_q, log_p),
    "jsd": beta * rel_entr(p, m).sum(-1) + (1 - beta) * rel_entr(q, m).sum(-1),
  }


def _logits(seed, shape, scale=3.0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=shape) * scale).astype(np.float32), (
    rng.normal(size=shape) * scale
  ).astype(np.float32)


# ----------------------------------------------------------------------------- brute force


@pytest.mark.parametrize("shape", [(7,), (3, 11), (2, 5, 32)])
@pytest.mark.parametrize("beta,temperature", [(0.1, 1.0), (0.5, 0.5), (0.9, 2.0)])
def test_matches_float64_brute_force(shape, beta, temperature):
  p, q = _logits(len(shape) * 100 + int(beta * 10), shape)
  ref = _reference(p, q, beta, temperature)
  out = _evaluate(beta, temperature, grads=False)(p, q)
  for name in NAMES:
    np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(out["njsd"], ref["jsd"] / (beta * (1 - beta)), rtol=1e-5, atol=1e-6)
  assert all(out[name].dtype == jnp.float32 and out[name].shape == shape[:-1] for name in NAMES)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_any_input_dtype_computes_in_float32(dtype):
  p, q = _logits(0, SHAPE)
  p_cast = jnp.asarray(p, dtype)
  exact = np.asarray(p_cast.astype(jnp.float32))
  out, expected = _evaluate(grads=False)(p_cast, q), _evaluate(grads=False)(exact, q)
  for name in NAMES:
    assert out[name].dtype == jnp.float32, name
    np.testing.assert_allclose(out[name], expected[name], rtol=1e-6, err_msg=name)


def test_all_divergences_equals_the_single_functions():
  p, q = _logits(1, SHAPE)
  out, expected = jax.jit(D.all_divergences)(p, q), _evaluate(grads=False)(p, q)
  assert set(out) == set(NAMES)
  for name in NAMES:
    np.testing.assert_allclose(out[name], expected[name], rtol=1e-6, err_msg=name)
  assert np.all(np.asarray(out["jsd"]) <= LN2 + 1e-6)


# ----------------------------------------------------------------------------- properties

finite_logits = hnp.arrays(np.float32, SHAPE, elements=st.floats(-30, 30, width=32))


@st.composite
def masked_logits(draw):
  """Logits with some -inf entries (masked vocabulary), never a whole row."""
  logits, masked = draw(finite_logits), draw(hnp.arrays(np.bool_, SHAPE))
  masked[masked.all(-1), draw(st.integers(0, SHAPE[-1] - 1))] = False
  return np.where(masked, -np.inf, logits).astype(np.float32)


@settings(max_examples=50, deadline=None)
@given(finite_logits, finite_logits, st.sampled_from(BETAS))
def test_nonnegative_zero_on_equal_inputs_bounded_and_symmetric(p, q, beta):
  out = _evaluate(beta)(p, q)
  for name in (*NAMES, "njsd"):
    assert np.all(np.isfinite(out[name])) and np.all(np.asarray(out[name]) >= 0), name
    assert np.all(np.isfinite(out["grad_" + name])), name
  # JSD_beta <= the binary entropy of beta (ln 2 at 0.5).
  entropy = -beta * math.log(beta) - (1 - beta) * math.log(1 - beta)
  assert np.all(np.asarray(out["jsd"]) <= entropy + 1e-6)
  # jsd(0.5) is symmetric in (p, q); divergences of equal inputs are exactly 0 (rounding below 0
  # is clipped).
  half = _evaluate(0.5)
  np.testing.assert_allclose(half(p, q)["jsd"], half(q, p)["jsd"], rtol=1e-5, atol=1e-7)
  same = _evaluate(beta)(p, p)
  for name in (*NAMES, "njsd"):
    np.testing.assert_array_equal(same[name], 0.0)
    np.testing.assert_allclose(same["grad_" + name], 0.0, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(masked_logits(), masked_logits(), st.sampled_from(BETAS))
def test_minus_inf_logits_match_brute_force(p, q, beta):
  """-inf in either or both inputs: jsd always finite; a KL is inf exactly when truly infinite."""
  ref, out = _reference(p, q, beta), _evaluate(beta)(p, q)
  assert np.all(np.isfinite(ref["fkl"]) == np.all((q > -np.inf) | (p == -np.inf), -1))
  for name in NAMES:
    np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-6, err_msg=name)
  assert np.all(np.isfinite(out["jsd"])) and np.all(np.isfinite(out["njsd"]))


def _finite(x):
  """-inf logits replaced by -1e30: the same distribution, with no -inf anywhere."""
  return np.where(np.isfinite(x), x, -1e30).astype(np.float32)


@settings(max_examples=50, deadline=None)
@given(masked_logits(), finite_logits, st.sampled_from(BETAS))
def test_gradients_with_minus_inf_are_finite_and_correct(p, q, beta):
  """d/d student logits with -inf in the reference only, or the same -inf in both.

  A -inf logit is the limit of a very negative one: gradients must equal those with the -inf
  entries replaced by -1e30 (probability exactly 0 as well).
  """
  evaluate = _evaluate(beta)
  shared = np.where(p > -np.inf, q, -np.inf).astype(np.float32)
  cases = [
    (p, shared, ("fkl", "rkl", "jsd", "njsd")),
    (p, q, ("fkl", "jsd", "njsd")),
  ]  # ref-only -inf: KL(q || p) is truly infinite
  for ref_logits, student_logits, names in cases:
    out, expected = (
      evaluate(ref_logits, student_logits),
      evaluate(_finite(ref_logits), _finite(student_logits)),
    )
    for name in names:
      assert np.all(np.isfinite(out[name])), name
      assert np.all(np.isfinite(out["grad_" + name])), name
      np.testing.assert_allclose(
        out["grad_" + name], expected["grad_" + name], rtol=1e-5, atol=1e-6, err_msg=name
      )


@pytest.mark.parametrize("scale", [1e4, 1e30])
def test_huge_logits_stay_finite(scale):
  p, q = _logits(2, SHAPE, scale=scale)
  ref, out = _reference(p, q), _evaluate()(p, q)
  for name in NAMES:
    assert np.all(np.isfinite(out[name])) and np.all(np.asarray(out[name]) >= 0), name
    assert np.all(np.isfinite(out["grad_" + name])), name
    np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, err_msg=name)
  assert np.all(np.asarray(out["jsd"]) <= LN2 + 1e-6)


@settings(max_examples=25, deadline=None)
@given(finite_logits, finite_logits, st.sampled_from([0.25, 3.0]))
def test_temperature_divides_both_logits(p, q, temperature):
  scaled = _evaluate(0.5, temperature, grads=False)(p, q)
  plain = _evaluate(0.5, grads=False)(p / temperature, q / temperature)
  for name in (*NAMES, "njsd"):
    np.testing.assert_allclose(scaled[name], plain[name], rtol=1e-5, atol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------- beta


def test_normalised_jsd_tends_to_fkl_and_rkl():
  p, q = _logits(3, SHAPE, scale=1.0)
  fkl, rkl = D.fkl(p, q), D.rkl(p, q)
  # JSD_b / (b (1 - b)) = fkl + O(b) near 0 and rkl + O(1 - b) near 1: within 1e-3 relative at
  # b = 1e-4 (the O(b) term is ~1e-4 relative here; float32 rounding is far smaller) ...
  np.testing.assert_allclose(D.jsd(p, q, 1e-4, normalized=True), fkl, rtol=1e-3)
  np.testing.assert_allclose(D.jsd(p, q, 1 - 1e-4, normalized=True), rkl, rtol=1e-3)
  # ... with full float32 precision there (no cancellation), against float64.
  for beta in (1e-4, 1 - 1e-4):
    np.testing.assert_allclose(
      D.jsd(p, q, beta, normalized=True),
      _reference(p, q, beta)["jsd"] / (beta * (1 - beta)),
      rtol=1e-5,
    )
  # The endpoints are fkl and rkl exactly; the plain JSD is 0 there.
  np.testing.assert_array_equal(D.jsd(p, q, 0.0, normalized=True), fkl)
  np.testing.assert_array_equal(D.jsd(p, q, 1.0, normalized=True), rkl)
  np.testing.assert_array_equal(D.jsd(p, q, 0.0), np.zeros(SHAPE[0], np.float32))
  np.testing.assert_array_equal(D.jsd(p, q, 1.0), np.zeros(SHAPE[0], np.float32))
  # Below float32's range beta acts as 0, so the normalised form stays continuous.
  for beta in (1e-30, 1e-40, 1e-300):
    np.testing.assert_allclose(D.jsd(p, q, beta, normalized=True), fkl, rtol=1e-5)


def test_validation_errors():
  p, q = _logits(4, SHAPE)
  for beta in (-0.1, 1.5, float("nan")):
    with pytest.raises(ValueError, match="beta"):
      D.jsd(p, q, beta)
  for temperature in (0.0, -1.0):
    with pytest.raises(ValueError, match="temperature"):
      D.fkl(p, q, temperature=temperature)
  with pytest.raises(ValueError, match="fkl.*rkl.*jsd"):
    D.get("kl")
  with pytest.raises(ValueError, match="fkl"):
    D.token_divergence("tvd", p, q)


def test_registry_and_dispatch():
  assert D.DIVERGENCES == {"fkl": D.fkl, "rkl": D.rkl, "jsd": D.jsd}
  assert all(D.get(name) is fn for name, fn in D.DIVERGENCES.items())
  p, q = _logits(5, SHAPE)
  np.testing.assert_array_equal(D.token_divergence("fkl", p, q, temperature=2.0), D.fkl(p, q, 2.0))
  np.testing.assert_array_equal(D.token_divergence("rkl", p, q, beta=0.3), D.rkl(p, q))
  np.testing.assert_array_equal(
    D.token_divergence("jsd", p, q, beta=0.3, normalized=True), D.jsd(p, q, 0.3, normalized=True)
  )


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_fkl_gradient_closed_form(temperature):
  """d fkl / d student_logits = (softmax(q / t) - softmax(p / t)) / t, also near p == q where
  rounding may put the value below 0 (it is clipped, the gradient is not)."""
  p, q = _logits(6, SHAPE)
  p[:, 3] = -np.inf  # a masked vocabulary entry in the reference
  near = (p + 1e-6 * np.random.default_rng(0).normal(size=SHAPE)).astype(np.float32)
  for student, atol in ((q, 1e-6), (near, 1e-7)):
    grad = _evaluate(0.5, temperature)(p, student)["grad_fkl"]
    expected = softmax(student / temperature, axis=-1) - softmax(p / temperature, axis=-1)
    np.testing.assert_allclose(grad, expected / temperature, atol=atol)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_gradients_match_float64_finite_differences(beta):
  p, q = _logits(7, SHAPE, scale=1.5)
  out = _evaluate(beta)(p, q)
  h = 1e-6
  for name in NAMES:
    numeric = np.zeros(SHAPE)
    for index in np.ndindex(SHAPE):
      step = np.zeros(SHAPE)
      step[index] = h
      numeric[index] = (
        _reference(p, q + step, beta)[name].sum() - _reference(p, q - step, beta)[name].sum()
      ) / (2 * h)
    np.testing.assert_allclose(out["grad_" + name], numeric, rtol=1e-4, atol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------- reductions

_REDUCTIONS = jax.jit(
  lambda values, mask: (
    D.per_token_mean(values, mask),
    D.per_sequence_mean(values, mask),
    jax.grad(D.per_token_mean)(values, mask),
    jax.grad(D.per_sequence_mean)(values, mask),
  )
)


@settings(max_examples=50, deadline=None)
@given(
  hnp.arrays(np.float32, (3, 5), elements=st.floats(-10, 10, width=32)),
  hnp.arrays(np.bool_, (3, 5)),
)
def test_reductions_ignore_padding_even_if_nan(values, mask):
  poisoned = values.copy()
  poisoned[~mask] = np.where(np.arange((~mask).sum()) % 2, np.nan, np.inf)
  expected_token = values[mask].astype(np.float64).sum() / max(mask.sum(), 1)
  expected_sequence = np.where(mask, values, 0.0).astype(np.float64).sum(-1).mean()
  for m in (mask, mask.astype(np.float32)):
    per_token, per_sequence, grad_token, grad_sequence = _REDUCTIONS(poisoned, m)
    np.testing.assert_allclose(per_token, expected_token, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(per_sequence, expected_sequence, rtol=1e-5, atol=1e-5)
    for grad in (grad_token, grad_sequence):
      assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~mask] == 0)


def test_reductions_shapes_and_all_padding():
  values = np.array([[1.0, 2.0, np.nan], [4.0, np.inf, np.nan]], np.float32)
  mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  assert D.per_token_mean(values, mask).shape == ()
  assert float(D.per_token_mean(values, mask)) == pytest.approx(7.0 / 3.0)
  assert float(D.per_sequence_mean(values, mask)) == pytest.approx((3.0 + 4.0) / 2)
  assert float(D.per_token_mean(values, np.zeros_like(mask))) == 0.0
  assert float(D.per_sequence_mean(values, np.zeros_like(mask))) == 0.0


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_argument_order_and_temperature_as_optax_states_them(temperature):
  """`fkl(ref, student, T)` = optax.kl_divergence(log_softmax(student / T), softmax(ref / T)):
  optax takes the student's log-probabilities first (the module doc's convention table)."""
  import optax

  rng = np.random.default_rng(3)
  ref, student = rng.normal(size=(2, 4, 11)) * 2
  log_q, p = jax.nn.log_softmax(student / temperature), jax.nn.softmax(ref / temperature)
  log_p, q = jax.nn.log_softmax(ref / temperature), jax.nn.softmax(student / temperature)
  np.testing.assert_allclose(
    D.fkl(ref, student, temperature), optax.kl_divergence(log_q, p), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    D.rkl(ref, student, temperature), optax.kl_divergence(log_p, q), rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_jsd_is_trls_generalized_jsd_loss_per_position(beta):
  """TRL's `GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, beta, temperature)`
  (its formula, computed with torch's `kl_div` in float64): the student first; per position our
  `jsd(ref, student, beta, T)` inside (0, 1) and the normalised form at the ends, where TRL
  switches to the forward and reverse KL."""
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  rng = np.random.default_rng(4)
  ref, student = rng.normal(size=(2, 3, 5, 13)) * 2
  temperature = 1.5
  s = F.log_softmax(torch.tensor(student) / temperature, dim=-1)
  t = F.log_softmax(torch.tensor(ref) / temperature, dim=-1)
  if beta == 0:
    trl = F.kl_div(s, t, reduction="none", log_target=True)
  elif beta == 1:
    trl = F.kl_div(t, s, reduction="none", log_target=True)
  else:
    b = torch.tensor(beta, dtype=s.dtype)
    m = torch.logsumexp(torch.stack([s + torch.log(1 - b), t + torch.log(b)]), dim=0)
    kl_t = F.kl_div(m, t, reduction="none", log_target=True)
    kl_s = F.kl_div(m, s, reduction="none", log_target=True)
    trl = beta * kl_t + (1 - beta) * kl_s
  ours = D.jsd(ref, student, beta, temperature, normalized=beta in (0.0, 1.0))
  np.testing.assert_allclose(ours, trl.sum(-1).numpy(), rtol=1e-5, atol=1e-6)
