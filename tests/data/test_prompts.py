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


# SHA-256 of the default config's synthetic pools as the numpy arrays of 0316916 (before pools
# carried masks): the default study's prompts must stay byte for byte the same.
DEFAULT_POOLS_SHA256 = {
  "oracle": "421a0bf286a6dd73c322eb091b97577a81a47de4d4b5154c0501e88819b71c14",
  "distill": "94371c59f3047768a7db52b65c8ec0e4eba248c7417bfcc34b334bd033f9965f",
  "eval": "a009456af6921e49022c525e7931787cd2f764ea5b92081e04f7b72cc288f3f2",
}


def test_the_default_synthetic_pools_are_unchanged_and_all_real():
  import hashlib

  from th_distill.config import base_config
  from th_distill.config.run_config import RunConfig
  from th_distill.data.pools import prompt_pools

  pools = prompt_pools(RunConfig.from_config(base_config()))
  for name, pool in pools.items():
    assert pool.tokens.dtype == np.int32 and pool.mask.all()
    assert hashlib.sha256(pool.tokens.tobytes()).hexdigest() == DEFAULT_POOLS_SHA256[name]
