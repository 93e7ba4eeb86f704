"""Study (d): the distillation loss, forward KL vs reverse KL vs Jensen-Shannon (beta = 0.5), each
offline (N = 128 x k = 1) and online from the teacher.
  python -m th_distill.study --config=configs/studies/loss.py --workdir=/tmp/studies
"""

import ml_collections

from th_distill.config import base_config


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "loss"
  c.title = "Distillation loss: fkl vs rkl vs jsd, offline and online teacher (tiny)"
  c.base = base_config()
  c.base.regimes = ("offline", "online_teacher")
  c.variants = {name: {"loss": {"name": name, "beta": 0.5}} for name in ("fkl", "rkl", "jsd")}
  c.seeds = (0, 1, 2)
  return c
