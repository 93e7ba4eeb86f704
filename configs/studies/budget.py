"""Study (c): generation budget, k = 1, 2, 4, 8 teacher generations per prompt at a fixed
N = 128 prompts (offline). The paper: more generations per prompt improve both metrics.
  python -m th_distill.study --config=configs/studies/budget.py --workdir=/tmp/studies
"""

import ml_collections

from th_distill.config import base_config


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "budget"
  c.title = "Generation budget: k generations per prompt at N = 128 (offline, tiny)"
  c.base = base_config()
  c.base.regimes = ("offline",)
  c.variants = {f"k{k}": {"offline": {"num_prompts": 128, "generations_per_prompt": k}}
                for k in (1, 2, 4, 8)}
  c.seeds = (0, 1, 2)
  return c
