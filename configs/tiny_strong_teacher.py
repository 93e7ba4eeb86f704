"""The paper's conditions at CPU scale: a teacher better than its student; nothing hacks it here.

A teacher twice as wide as the student (d_model 128), trained by SFT on 16,384 oracle samples near
its best golden distance (about 0.48 nats/token on seed 0), and the default's student, initialised
by 500 SFT steps on the same samples (about 0.62). The teacher is better than the student at its
start; offline and online students fall to the teacher's level and stay there (the online ones end
level with it or a hair below). In this toy a golden rise after the minimum appears only where the
student overtakes its teacher (configs/tiny.py); docs/signature_search.md section 5 has the
evidence.

Memory: plan for 2 GB per CPU device on mesh (data, fsdp, model) = (1, 1, 1), the regimes side
by side (tests/planning/test_config_memory.py checks every config's claim).
"""

from th_distill.config import strong_teacher_config


def get_config():
  return strong_teacher_config()
