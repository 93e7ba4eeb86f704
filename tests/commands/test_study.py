"""The study runner on the micro configuration: runs, sharing, caching, report, bad overrides."""

import json
import os

import pytest

from th_distill import config as config_lib
from th_distill import study


def _study(micro, variants, seeds=(0, 1)):
  return study.study_config("micro_study", "micro", micro, variants, seeds)


def test_study_runs_every_seed_and_variant_and_writes_the_report(micro, tmp_path):
  micro.regimes = ("offline", "online_teacher")
  s = _study(
    micro,
    {
      "k1": {"offline": {"generations_per_prompt": 1}},
      "k2": {"offline": {"generations_per_prompt": 2}},
    },
  )
  summary = study.run(s, str(tmp_path))

  report_dir = tmp_path / "micro_study"
  for name in ("report.md", "summary.json", "curves.png", "proxy_golden.png", "detector.png"):
    assert (report_dir / name).exists(), name
  assert set(summary["arms"]) == {
    "k1 / offline",
    "k1 / online_teacher",
    "k2 / offline",
    "k2 / online_teacher",
  }
  for arm in summary["arms"].values():
    assert set(arm["seeds"]) == {"0", "1"}
    for s0 in arm["seeds"].values():
      assert {"golden_min", "golden_rise_pct", "hacking", "detected", "detected_step"} <= set(s0)
  # One stage 1 per seed, shared by both variants; one run directory per (variant, seed).
  assert len(os.listdir(tmp_path / "stage1")) == 2
  assert len(os.listdir(tmp_path / "runs")) == 2
  quality = summary["detector"]
  assert quality["runs"] == 8
  assert (
    sum(
      quality[k] for k in ("true_positives", "false_positives", "false_negatives", "true_negatives")
    )
    == 8
  )
  text = (report_dir / "report.md").read_text()
  assert "| k2 / offline | 2 |" in text
  # Every arm against the first, paired over the two seeds.
  assert summary["reference"] == "k1 / offline"
  assert set(summary["paired"]) == {"k1 / online_teacher", "k2 / offline", "k2 / online_teacher"}
  assert summary["paired"]["k2 / offline"]["golden_final"]["n"] == 2
  assert "| k2 / offline | " in text.split("## Arms against each other")[1]

  # Running again reuses everything: no regime is trained a second time.
  done = {p: os.path.getmtime(p) for p in tmp_path.glob("runs/*/seed*/*/done.json")}
  assert len(done) == 8
  again = study.run(s, str(tmp_path))
  assert {p: os.path.getmtime(p) for p in done} == done
  assert json.dumps(again["arms"], sort_keys=True) == json.dumps(summary["arms"], sort_keys=True)

  # Another study in the same workdir shares the runs whose configs are identical.
  other = study.study_config(
    "other", "other", micro, {"same_as_k2": {"offline": {"generations_per_prompt": 2}}}, (1,)
  )
  shared = study.run(other, str(tmp_path))
  assert len(os.listdir(tmp_path / "runs")) == 2
  assert {p: os.path.getmtime(p) for p in done} == done
  assert json.dumps(shared["arms"]["offline"]["seeds"]["1"]) == json.dumps(
    summary["arms"]["k2 / offline"]["seeds"]["1"]
  )


def test_an_unknown_reference_arm_is_refused_before_any_run(micro, tmp_path):
  s = _study(micro, {"k1": {"offline": {"generations_per_prompt": 1}}})
  s.reference = "ofline"  # one variant: the arms are named by their regime
  with pytest.raises(config_lib.ConfigError, match="did you mean offline"):
    study.run(s, str(tmp_path))
  assert not (tmp_path / "runs").exists()


def test_unknown_override_names_the_field(micro):
  with pytest.raises(config_lib.ConfigError, match=r"variants\.bad\.offline\.num_promtps"):
    study.run_configs(_study(micro, {"bad": {"offline": {"num_promtps": 3}}}))
  with pytest.raises(
    config_lib.ConfigError, match="(?s)variant 'big', seed 0: .*offline.num_prompts"
  ):
    study.run_configs(_study(micro, {"big": {"offline": {"num_prompts": 10_000}}}, seeds=(0,)))


def test_detector_eval_calibrates_on_some_seeds_and_scores_on_others(tmp_path):
  import numpy as np

  from th_distill import detector_eval, errors
  from th_distill.observing.metric_names import GOLDEN, PROXY

  steps = np.unique(np.rint(np.geomspace(1, 3000, 45))).astype(int)
  converging = 0.8 * steps**-0.15
  # Teacher hacking on held-out prompts: from step 200 the proxy still falls, at a fifth of its
  # rate, while golden turns up; it never rises, so early stopping cannot see it.
  slows = np.where(steps <= 200, converging, 0.8 * 200**-0.15 * (steps / 200) ** -0.03)
  turn = 2e-4 * np.maximum(steps - 200, 0)
  for seed in (0, 1):
    for name, proxy, golden in (
      ("offline", slows, 1.0 + slows + turn),
      ("online_teacher", converging, 1.0 + converging),
    ):
      directory = tmp_path / "runs" / "abc" / f"seed{seed}" / name
      directory.mkdir(parents=True)
      rows = [{"step": int(s), PROXY: p, GOLDEN: g} for s, p, g in zip(steps, proxy, golden)]
      (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
      (directory / "done.json").write_text("{}")
  runs = detector_eval.finished_runs([str(tmp_path), str(tmp_path)], threshold_pct=5.0)
  assert [(r.seed, r.outcome, r.proxy_never_rises) for r in runs] == [
    (0, "teacher_hacking", True),
    (0, "none", True),
    (1, "teacher_hacking", True),
    (1, "none", True),
  ]
  result = detector_eval.calibrate_and_test(runs, [0], [1])
  test = result["methods"]["slowdown (the detector)"]["test"]
  assert (test["true_positives"], test["false_positives"], test["true_negatives"]) == (1, 0, 1)
  assert test["recall_proxy_never_rises"] == 1.0 and test["lag_evals"][0] > 0
  assert result["methods"]["early stopping on the held-out proxy"]["test"]["recall"] == 0.0
  assert (
    detector_eval.table(result).splitlines()[2].startswith("| slowdown (the detector) | window ")
  )
  with pytest.raises(errors.RunError, match="overlap"):
    detector_eval.calibrate_and_test(runs, [0, 1], [1])
