"""Study (c): generation budget, k = 1, 2, 4, 8 teacher generations per prompt at a fixed
N = 128 prompts (offline). The paper: more generations per prompt improve both metrics.
  python -m th_distill.study --config=configs/studies/budget.py --workdir=/tmp/studies
"""

from th_distill.config import base_config
from th_distill.study import study_config


def get_config():
  base = base_config()
  base.regimes = ("offline",)
  variants = {f"k{k}": {"offline": {"num_prompts": 128, "generations_per_prompt": k}}
              for k in (1, 2, 4, 8)}
  return study_config("budget", "Generation budget: k generations per prompt at N = 128 "
                      "(offline, tiny)", base, variants)
