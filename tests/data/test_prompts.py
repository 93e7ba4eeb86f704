"""Synthetic prompts: distinct rows, disjoint pools, T5-sized vocabularies and lengths."""

import numpy as np
import pytest

from th_distill.data import prompts


def test_t5_vocabulary_and_long_prompts_do_not_overflow():
  # configs/t5_small.py: 32,126 usable tokens, 256-token prompts (32,126^256 overflows a float).
  rows = prompts.zipf_prompts(0, 64, 256, 32128)
  assert rows.shape == (64, 256) and rows.dtype == np.int32
  assert rows.min() >= prompts.FIRST_TOKEN and rows.max() < 32128
  assert len({r.tobytes() for r in rows}) == 64


def test_too_many_prompts_for_the_space_is_refused():
  with pytest.raises(ValueError, match="Cannot draw 100 distinct prompts of length 2"):
    prompts.zipf_prompts(0, 100, 2, 7)  # 5^2 = 25 possible prompts


def test_pools_are_consecutive_disjoint_slices():
  rows = prompts.zipf_prompts(1, 30, 6, 64)
  pools = prompts.split_pools(rows, {"a": 10, "b": 20})
  np.testing.assert_array_equal(np.concatenate([pools["a"], pools["b"]]), rows)
