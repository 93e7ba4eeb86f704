"""Study (c): generation budget, k = 1, 2, 4, 8 teacher generations per prompt at a fixed
N = 128 prompts (offline). The paper: more generations per prompt improve both metrics.
Setting: the over-fitting contrast (configs/tiny_overfit.py), in which docs/studies.md reports
it; online arms draw from the 1,024-prompt pool.
  python -m th_distill.study --config=configs/studies/budget.py --workdir=/tmp/studies
"""

from th_distill.config import overfit_config
from th_distill.study import study_config


def get_config():
  base = overfit_config()
  base.regimes = ("offline",)
  variants = {f"k{k}": {"offline": {"num_prompts": 128, "generations_per_prompt": k}}
              for k in (1, 2, 4, 8)}
  return study_config("budget", "Generation budget: k generations per prompt at N = 128 "
                      "(offline, tiny_overfit)", base, variants)
