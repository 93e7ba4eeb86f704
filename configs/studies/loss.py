"""Study (d): the distillation loss, forward KL vs reverse KL vs Jensen-Shannon (beta = 0.5), each
offline (N = 128 x k = 1) and online from the teacher.
Setting: the over-fitting contrast (configs/tiny_overfit.py), in which docs/studies.md reports
it; online arms draw from the 1,024-prompt pool.
  python -m th_distill.study --config=configs/studies/loss.py --workdir=/tmp/studies
"""

from th_distill.config import overfit_config
from th_distill.study import study_config


def get_config():
  base = overfit_config()
  base.regimes = ("offline", "online_teacher")
  variants = {name: {"loss": {"name": name, "beta": 0.5}} for name in ("fkl", "rkl", "jsd")}
  return study_config("loss", "Distillation loss: fkl vs rkl vs jsd, offline and online teacher "
                      "(tiny_overfit)", base, variants)
