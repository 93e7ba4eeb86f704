"""Study (d): the distillation loss, forward KL vs reverse KL vs Jensen-Shannon (beta = 0.5), each
offline (N = 4,096 x k = 1) and online from the teacher (on the same prompts).
Setting: the default (configs/tiny.py), seeds 0-4.
  python -m th_distill.study --config=configs/studies/loss.py --workdir=/tmp/studies
"""

from th_distill.config import base_config
from th_distill.study import study_config


def get_config():
  base = base_config()
  base.regimes = ("offline", "online_teacher")
  variants = {name: {"loss": {"name": name, "beta": 0.5}} for name in ("fkl", "rkl", "jsd")}
  return study_config(
    "loss",
    "Distillation loss: fkl vs rkl vs jsd, offline and online teacher (tiny)",
    base,
    variants,
    seeds=(0, 1, 2, 3, 4),
    reference="fkl / offline",
  )
