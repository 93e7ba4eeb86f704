"""Study (b): prompt diversity at a fixed offline dataset size, N prompts x k generations with
N x k = 4,096: (4,096 x 1), (2,048 x 2), (1,024 x 4), (512 x 8). The paper (Fig. 6): fewer prompts
with more generations each give a worse golden metric and more evident hacking, with the proxy
and the training loss nearly unchanged.
Setting: the default (configs/tiny.py), offline only, 2,000 steps, seeds 0-4.
  python -m th_distill.study --config=configs/studies/diversity.py --workdir=/tmp/studies
"""

from th_distill.config import base_config
from th_distill.study import study_config


def get_config():
  base = base_config()
  base.regimes = ("offline",)
  variants = {
    f"N{n}_k{k}": {"offline": {"num_prompts": n, "generations_per_prompt": k}}
    for n, k in ((4096, 1), (2048, 2), (1024, 4), (512, 8))
  }
  return study_config(
    "diversity",
    "Prompt diversity at a fixed dataset size (N x k = 4,096, offline, tiny)",
    base,
    variants,
    seeds=(0, 1, 2, 3, 4),
    reference="N4096_k1",
  )
