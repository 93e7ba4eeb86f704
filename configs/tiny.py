"""The embedded CPU default: a tiny synthetic study whose student is pulled toward a worse teacher.

Oracle: a random T5 (d_model 64, 2+2 layers, vocab 64) sharpened to 2 nats/token. Teacher: the
same size, trained by SFT on 4,096 oracle samples past its best golden distance, to 0.80-0.92
nats/token. Student: the same size, initialised by 500 SFT steps on those oracle samples, which
leave it *better* than the teacher (about 0.70), distilled with forward KL for 2,000 steps under
offline (N = 4,096 prompts x k = 1), online-teacher and online-student data on the same prompts.
On held-out prompts the offline golden distance falls (the student takes what the teacher knows
beyond its own SFT), then rises back toward the worse teacher while the proxy keeps falling; the
online arms do the same more slowly, so online data delays the rise rather than preventing it.
This is regression toward a teacher worse than the student, not the paper's setting, where the
teacher is the better model: configs/tiny_strong_teacher.py has that setting, which hacks nothing
in this toy (docs/signature_search.md section 5, docs/results.md).

Memory: plan for 2 GB per CPU device on mesh (data, fsdp, model) = (1, 1, 1), the regimes side
by side (tests/planning/test_config_memory.py checks every config's claim).
"""

from th_distill.config import base_config


def get_config():
  return base_config()
