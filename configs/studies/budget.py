"""Study (c): generation budget, k = 1, 2, 4, 8 teacher generations per prompt at a fixed
N = 4,096 prompts (offline; the dataset grows with k at a fixed 2,000 steps). The paper: more
generations per prompt improve both metrics and reduce hacking.
Setting: the default (configs/tiny.py), seeds 0-4.
  python -m th_distill.study --config=configs/studies/budget.py --workdir=/tmp/studies
"""

from th_distill.config import base_config
from th_distill.study import study_config


def get_config():
  base = base_config()
  base.regimes = ("offline",)
  variants = {
    f"k{k}": {"offline": {"num_prompts": 4096, "generations_per_prompt": k}} for k in (1, 2, 4, 8)
  }
  return study_config(
    "budget",
    "Generation budget: k generations per prompt at N = 4,096 (offline, tiny)",
    base,
    variants,
    seeds=(0, 1, 2, 3, 4),
    reference="k1",
  )
