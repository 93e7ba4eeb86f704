"""The former embedded default, kept as the over-fitting contrast to configs/tiny.py.

A rougher oracle (weight_scale 2), a narrower student (d_model 32) distilled from scratch, offline
data of N = 128 prompts x k = 1 (about 750 epochs in 3,000 steps), online regimes on a pool of
1,024 prompts. On held-out prompts the offline student over-fits: golden and proxy rise together
after step 144, which is not teacher hacking (docs/results.md).

Memory: plan for 2 GB per CPU device on mesh (data, fsdp, model) = (1, 1, 1), the regimes side
by side (tests/planning/test_config_memory.py checks every config's claim).
"""

from th_distill.config import overfit_config


def get_config():
  return overfit_config()
