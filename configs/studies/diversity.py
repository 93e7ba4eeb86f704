"""Study (b): prompt diversity at a fixed offline dataset size, N prompts x k generations with
N x k = 320: (320 x 1), (160 x 2), (64 x 5). The paper: fewer prompts with more generations each
hacks more.
Setting: the over-fitting contrast (configs/tiny_overfit.py), in which docs/studies.md reports
it; online arms draw from the 1,024-prompt pool.
  python -m th_distill.study --config=configs/studies/diversity.py --workdir=/tmp/studies
"""

from th_distill.config import overfit_config
from th_distill.study import study_config


def get_config():
  base = overfit_config()
  base.regimes = ("offline",)
  variants = {f"k{k}_N{n}": {"offline": {"num_prompts": n, "generations_per_prompt": k}}
              for n, k in ((320, 1), (160, 2), (64, 5))}
  return study_config("diversity", "Prompt diversity at a fixed dataset size (N x k = 320, "
                      "offline, tiny)", base, variants)
