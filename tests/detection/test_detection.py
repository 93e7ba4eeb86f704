"""Convergence-law fits and the hacking detector on synthetic curves with known answers."""

import dataclasses

import numpy as np
import pytest

from th_distill import detection

STEPS = np.unique(np.rint(np.geomspace(1, 3000, 45)))
# The 'departure' rule with the settings it had as the default before 'slowdown'.
DEPARTURE = detection.DetectorSettings(
  rule="departure", law="power", min_fit_points=8, window=30.0, patience=3
)


def _noisy(curve, sigma, seed):
  return curve * np.exp(np.random.default_rng(seed).normal(0.0, sigma, curve.shape))


@pytest.mark.parametrize(
  "a,b,c", [(2.0, 0.5, 0.3), (1.0, 1.2, 0.0), (5.0, 0.3, 1.0), (0.8, 2.0, 0.05)]
)
def test_power_law_recovers_known_parameters_within_their_standard_errors(a, b, c):
  fit = detection.fit_power_law(STEPS, _noisy(a * STEPS**-b + c, 0.01, seed=1))
  assert fit.ok and fit.num_points == len(STEPS)
  for name, true in (("a", a), ("b", b), ("c", c)):
    error = abs(fit.params[name] - true)
    assert error <= 4 * fit.stderr[name] + 1e-3, (name, fit.params, fit.stderr)
  assert fit.params["b"] == pytest.approx(b, rel=0.05)
  assert fit.residual_std == pytest.approx(0.01, rel=0.35)


def test_power_law_exact_on_noiseless_curves():
  fit = detection.fit_power_law(STEPS, 3.0 * STEPS**-0.7 + 0.2)
  assert fit.params["a"] == pytest.approx(3.0, rel=1e-3)
  assert fit.params["b"] == pytest.approx(0.7, rel=1e-3)
  assert fit.params["c"] == pytest.approx(0.2, rel=1e-3)
  np.testing.assert_allclose(fit.predict([5000.0]), 3.0 * 5000**-0.7 + 0.2, rtol=1e-3)


def test_prediction_uncertainty_grows_with_extrapolation_and_noise():
  early = STEPS[STEPS <= 100]
  quiet = detection.fit_power_law(early, _noisy(2 * early**-0.5 + 0.3, 0.002, seed=2))
  loud = detection.fit_power_law(early, _noisy(2 * early**-0.5 + 0.3, 0.02, seed=2))
  near, far = quiet.log_prediction_std([50.0, 3000.0])
  assert far > near > 0
  assert loud.log_prediction_std(3000.0) > quiet.log_prediction_std(3000.0)


def test_loglog_line_and_golden_vs_proxy():
  fit = detection.fit_loglog(STEPS, 4.0 * STEPS**-0.35)
  assert fit.params["a"] == pytest.approx(4.0) and fit.params["b"] == pytest.approx(0.35)
  assert fit.residual_std == pytest.approx(0.0, abs=1e-12)
  noisy = detection.fit_loglog(STEPS, _noisy(4.0 * STEPS**-0.35, 0.02, seed=3))
  assert abs(noisy.params["b"] - 0.35) < 4 * noisy.stderr["b"]
  proxy = np.linspace(1.5, 0.3, 30)
  golden = detection.fit_golden_vs_proxy(proxy, 2.0 * proxy**0.6)
  assert -golden.params["b"] == pytest.approx(0.6)  # alpha
  assert golden.params["a"] == pytest.approx(2.0)


def test_degenerate_curves_give_results_not_exceptions():
  constant = detection.fit_power_law(STEPS, np.full(len(STEPS), 0.7))
  assert constant.ok and constant.params == {"a": 0.0, "b": 0.0, "c": 0.7}
  rising = detection.fit_power_law(STEPS, 0.5 + 1e-4 * STEPS)
  assert rising.ok and rising.params["b"] == pytest.approx(0.0, abs=1e-3)
  assert detection.fit_loglog(STEPS, 0.5 + 1e-4 * STEPS).params["b"] < 0  # a rising line
  short = detection.fit_power_law([1, 2, 3], [1.0, 0.8, 0.7])
  assert not short.ok and "not enough points: 3" in short.reason
  gappy = detection.fit_power_law([1, 2, 3, 4, 5, 6], [1, np.nan, np.inf, -1, 0.6, 0.5])
  assert not gappy.ok and "3 usable" in gappy.reason
  assert not detection.fit_loglog([], []).ok
  assert not detection.fit_loglog([5, 5, 5], [1, 2, 3]).ok  # one x: no slope

  for settings in (DEPARTURE, detection.DetectorSettings()):
    for values in (np.full(len(STEPS), 0.7), np.full(len(STEPS), np.nan)):
      found = detection.detect(STEPS, values, settings)
      assert not found.detected and found.reason
    # A metric that only gets worse is above every converging law; it never converged, so it
    # cannot slow down.
    rising = detection.detect(STEPS, 0.5 + 1e-4 * STEPS, settings)
    assert rising.detected == (settings.rule == "departure")
    found = detection.detect([0, 1, 2], [1.0, 0.9, 0.8], settings)
    assert not found.detected and "never be scored" in found.reason
  assert not detection.detect([], []).detected
  with pytest.raises(ValueError, match="strictly increasing"):
    detection.detect([0, 2, 1], [1.0, 0.9, 0.8])


def _u_shaped(minimum_step, rise_per_step=2e-4):
  return 2 * STEPS**-0.5 + 0.3 + rise_per_step * np.maximum(STEPS - minimum_step, 0)


@pytest.mark.parametrize("seed", range(5))
def test_departure_fires_soon_after_a_u_turn(seed):
  found = detection.detect(STEPS, _noisy(_u_shaped(200), 0.005, seed), DEPARTURE)
  assert found.detected
  evals_after = np.searchsorted(STEPS, found.step) - np.searchsorted(STEPS, 200)
  assert 0 < evals_after <= 8, (found.step, found.reason)
  assert found.best_predicted_step < found.departure_step <= found.step
  assert found.fit.ok and found.fit.x_range[1] < found.departure_step


@pytest.mark.parametrize(
  "law,curves",
  [
    ("power", ((2, 0.5, 0.3), (1.5, 0.2, 0.0), (3, 1.0, 0.5))),
    ("loglog", ((2, 0.5, 0.0), (1.5, 0.2, 0.0), (3, 1.0, 0.0))),
  ],
)
def test_departure_stays_silent_on_converging_curves(law, curves):
  settings = dataclasses.replace(DEPARTURE, law=law)
  fired = [
    detection.detect(STEPS, _noisy(a * STEPS**-b + c, sigma, seed), settings).detected
    for seed in range(10)
    for a, b, c in curves
    for sigma in (0.002, 0.01)
  ]
  assert not any(fired)


def test_a_floor_is_a_departure_for_the_loglog_law_not_for_the_power_law():
  for seed in range(3):
    values = _noisy(2 * STEPS**-0.5 + 0.3, 0.01, seed)
    assert detection.detect(STEPS, values, dataclasses.replace(DEPARTURE, law="loglog")).detected
    assert not detection.detect(STEPS, values, DEPARTURE).detected


def test_direction_below_catches_a_curve_that_falls_faster_than_its_law():
  values = 2 * STEPS**-0.3 + 0.3
  values = np.where(STEPS > 300, values * np.exp(-(STEPS - 300) / 400), values)
  below = detection.detect(STEPS, values, dataclasses.replace(DEPARTURE, direction="below"))
  assert below.detected and below.departure_step > 300
  assert not detection.detect(STEPS, values, DEPARTURE).detected  # 'above' ignores it


@pytest.mark.parametrize(
  "settings",
  [DEPARTURE, detection.DetectorSettings(), detection.DetectorSettings(rule="early_stopping")],
)
def test_detector_is_causal_and_keeps_the_candidate_it_will_choose(settings):
  values = _noisy(_u_shaped(300), 0.005, seed=7)
  whole = detection.detect(STEPS, values, settings)
  incremental = detection.Detector(settings)
  fired_at, candidates = None, set()
  for step, value in zip(STEPS, values):
    incremental.add(step, value)
    if fired_at is None and incremental.result().detected:
      fired_at = step
      # The parameters of the chosen checkpoint were among those a callback kept.
      assert incremental.result().best_predicted_step in candidates | {int(step)}
    candidates = incremental.candidate_steps()
  assert whole.detected and fired_at == whole.step
  assert incremental.result().step == whole.step
  assert candidates == set()  # nothing left to keep once it fired
  np.testing.assert_array_equal(incremental.result().scores, whole.scores)


def test_noise_floor_and_threshold_control_sensitivity():
  values = _u_shaped(200, rise_per_step=3e-5)  # a gentle rise, noiseless
  assert detection.detect(STEPS, values, DEPARTURE).detected
  assert not detection.detect(
    STEPS, values, dataclasses.replace(DEPARTURE, noise_floor=0.2)
  ).detected


def _slowing(turn_step, exponent_after, sigma=0.0, seed=0):
  """0.8 t^-0.15 that continues with the exponent `exponent_after` from `turn_step` on."""
  early = 0.8 * STEPS**-0.15
  late = 0.8 * turn_step**-0.15 * (STEPS / turn_step) ** -exponent_after
  return _noisy(np.where(STEPS <= turn_step, early, late), sigma, seed)


@pytest.mark.parametrize("seed", range(5))
def test_slowdown_fires_on_a_proxy_that_keeps_falling_but_slower(seed):
  # The held-out proxy of an offline run that hacks: still falling, at a third of its rate.
  found = detection.detect(STEPS, _slowing(300, 0.05, 0.002, seed))
  assert found.detected, found.reason
  assert 300 < found.step <= 3 * 300 * 2.5, found.reason
  assert 300 / 2.5 <= found.best_predicted_step <= 300 * 1.5
  assert found.scores[np.searchsorted(STEPS, found.step)] < 0.8


@pytest.mark.parametrize("exponent", [0.1, 0.3, 1.0])
def test_slowdown_is_silent_on_power_laws_and_on_accelerating_curves(exponent):
  for seed in range(5):
    power = _noisy(0.8 * STEPS**-exponent, 0.002, seed)
    assert not detection.detect(STEPS, power).detected
    faster = _slowing(300, 2 * exponent, 0.002, seed)  # like the online arms: steeper later
    assert not detection.detect(STEPS, faster).detected


def test_a_floor_slows_the_log_log_slope():
  # What the rule cannot tell apart from hacking: a curve settling onto a floor.
  assert detection.detect(STEPS, 2 * STEPS**-0.5 + 0.3).detected


def test_early_stopping_fires_on_a_rise_above_the_running_minimum():
  settings = detection.DetectorSettings(rule="early_stopping", noise_floor=0.01, patience=3)
  found = detection.detect(STEPS, _u_shaped(200), settings)
  assert found.detected
  minimum = STEPS[np.argmin(_u_shaped(200))]
  assert found.best_predicted_step == minimum < found.departure_step <= found.step
  assert found.scores[np.searchsorted(STEPS, found.step)] > 0.01
  assert not detection.detect(STEPS, _slowing(300, 0.05), settings).detected


def test_settings_are_checked():
  with pytest.raises(ValueError, match="law"):
    detection.DetectorSettings(law="cubic")
  with pytest.raises(ValueError, match="direction"):
    detection.DetectorSettings(direction="up")
  with pytest.raises(ValueError, match="window"):
    detection.DetectorSettings(window=1.0)
  with pytest.raises(ValueError, match="rule"):
    detection.DetectorSettings(rule="curvature")
  with pytest.raises(ValueError, match="slope_ratio"):
    detection.DetectorSettings(slope_ratio=1.2)


def test_ground_truth():
  truth = detection.ground_truth([0, 10, 20, 30], [2.0, 1.0, 1.2, 1.1], threshold_pct=5)
  assert truth == {
    "golden_min": 1.0,
    "golden_min_step": 10,
    "golden_rise_pct": pytest.approx(10.0),
    "golden_rises": True,
  }
  flat = detection.ground_truth([0, 10], [2.0, 1.0], threshold_pct=5)
  assert not flat["golden_rises"] and flat["golden_rise_pct"] == 0.0
  assert detection.ground_truth([0], [np.nan], 5)["golden_min_step"] is None
