"""Paired comparisons of study arms against scipy's paired t-test."""

import numpy as np
import pytest
from scipy import stats

from th_distill.results import paired


def _arm(values, key="golden_final"):
  return {str(seed): {key: value} for seed, value in enumerate(values)}


def test_paired_difference_matches_scipys_paired_t_test():
  rng = np.random.default_rng(0)
  a, b = rng.normal(1.0, 0.1, 5), rng.normal(0.9, 0.1, 5)
  result = paired.compare(_arm(a), _arm(b), "golden_final")
  reference = stats.ttest_rel(a, b)
  assert result["n"] == 5
  assert result["mean"] == pytest.approx(np.mean(a - b))
  assert result["sd"] == pytest.approx(np.std(a - b, ddof=1))
  assert result["p_value"] == pytest.approx(reference.pvalue)
  assert result["exceeds_seed_noise"] == (reference.pvalue < 0.05)
  assert result["same_sign"] == int(np.sum(np.sign(a - b) == np.sign(np.mean(a - b))))


def test_seed_noise_decides_not_the_size_of_the_difference():
  small_consistent = paired.compare(
    _arm([1.01, 2.01, 3.01]), _arm([1.0, 2.0, 3.0005]), "golden_final"
  )
  large_noisy = paired.compare(_arm([1.5, 1.0, 3.0]), _arm([1.0, 1.6, 2.5]), "golden_final")
  assert small_consistent["exceeds_seed_noise"] and not large_noisy["exceeds_seed_noise"]


def test_pairs_only_common_finite_seeds_and_needs_two():
  a = {"0": {"k": 1.0}, "1": {"k": 2.0}, "2": {"k": None}, "3": {"k": 5.0}}
  b = {"0": {"k": 0.5}, "1": {"k": 1.0}, "2": {"k": 1.0}}
  result = paired.compare(a, b, "k")
  assert result["n"] == 2 and result["differences"] == [0.5, 1.0]
  assert paired.compare({"0": {"k": 1.0}}, {"0": {"k": 0.0}}, "k") is None
  same = paired.compare(_arm([1.0, 2.0]), _arm([1.0, 2.0]), "golden_final")
  assert same["p_value"] == 1.0 and not same["exceeds_seed_noise"]


def test_compare_arms_and_its_table():
  arms = {"ref": {"seeds": _arm([1.0, 1.1, 1.2])}, "other": {"seeds": _arm([1.2, 1.3, 1.41])}}
  comparisons = paired.compare_arms(arms, "ref")
  assert set(comparisons) == {"other"} and set(comparisons["other"]) == set(paired.COMPARED)
  assert comparisons["other"]["golden_rise_pct"] is None  # no such key in the summaries
  lines = paired.table(comparisons, "ref")
  assert lines[-1].startswith("| other | +0.2033 ± 0.0058 (3/3, p ") and "**\\***" in lines[-1]
  with pytest.raises(ValueError, match="reference arm 'nope'"):
    paired.compare_arms(arms, "nope")


def test_each_family_of_arms_is_paired_with_its_own_reference():
  arms = {
    "ref": {"seeds": _arm([1.0, 1.1, 1.2])},
    "a": {"seeds": _arm([1.5, 1.6, 1.7])},
    "base": {"seeds": _arm([3.0, 3.1, 3.3])},
    "b": {"seeds": _arm([3.1, 3.2, 3.4])},
  }
  comparisons = paired.compare_arms(arms, "ref", {"b": "base"})
  assert set(comparisons) == {"a", "b"}  # neither reference is compared
  assert comparisons["a"]["golden_final"]["mean"] == pytest.approx(0.5)
  assert comparisons["b"]["golden_final"]["mean"] == pytest.approx(0.1)
  lines = paired.table(comparisons, "ref", {"b": "base"})
  assert lines[-1].startswith("| b − base | +0.1000")
  with pytest.raises(ValueError, match="reference arm 'gone'"):
    paired.compare_arms(arms, "ref", {"b": "gone"})
