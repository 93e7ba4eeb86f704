"""The study runner on the micro configuration: runs, sharing, caching, report, bad overrides."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import micro_config

from th_distill import config as config_lib
from th_distill import errors, study
from th_distill.config.run_config import RunConfig
from th_distill.observing.metric_names import GOLDEN, PROXY
from th_distill.results import detector_runs, detector_scores, detector_tables


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
  s.references = {"k2 / online_teacher": "k1 / online_teacher"}  # a family of its own
  s.analysis, s.diversity = "gap_map", ("k2",)  # and the rise against the gap
  s.length_unit = 3  # read at steps 3 (1x) and 6 (2x)
  summary = study.run(s, str(tmp_path))

  report_dir = tmp_path / "micro_study"
  figures = ("curves.png", "proxy_golden.png", "detector.png", "cost.png")
  for name in ("report.md", "summary.json", *figures):
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
      assert s0["generation_flops"] > 0 and s0["teacher_samples_generated"] > 0
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
  # Every arm against the first (or its own reference), paired over the two seeds.
  assert summary["reference"] == "k1 / offline"
  assert summary["references"] == {"k2 / online_teacher": "k1 / online_teacher"}
  assert set(summary["paired"]) == {"k2 / offline", "k2 / online_teacher"}
  assert summary["paired"]["k2 / offline"]["golden_final"]["n"] == 2
  paired_text = text.split("## Arms against each other")[1]
  assert "| k2 / offline | " in paired_text
  points = json.loads((report_dir / "gap_map.json").read_text())["points"]
  assert len(points) == 16  # 2 variants x 2 regimes x 2 seeds x 2 lengths
  assert {(p["length"], p["steps"]) for p in points} == {("1x", 3), ("2x", 6)}
  assert all(p["teacher_golden"] > 0 and p["gap"] is not None for p in points)
  assert "| k2 | offline | 2x | 0, 1 |" in text.split("teacher-student gap")[-1]
  assert (report_dir / "rise_vs_gap.png").stat().st_size > 0
  assert "| k2 / online_teacher − k1 / online_teacher | " in paired_text

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


def test_finished_only_reports_the_finished_runs_and_runs_none(micro, tmp_path):
  micro.regimes = ("offline",)
  variants = {"k1": {"offline": {"generations_per_prompt": 1}}}
  study.run(_study(micro, variants, seeds=(0,)), str(tmp_path))
  runs = set(tmp_path.glob("runs/*/seed*"))
  summary = study.run(_study(micro, variants, seeds=(0, 1)), str(tmp_path), finished_only=True)
  assert set(tmp_path.glob("runs/*/seed*")) == runs  # seed 1 never started
  assert set(summary["arms"]["offline"]["seeds"]) == {"0"}


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


def _write_study_runs(root, seeds=(0, 1)):
  """A study workdir of two regimes per seed whose curves the detector can score: the offline
  run's proxy slows down while golden turns up at step 200 (teacher hacking, the proxy never
  rising), the online one converges. Each run has its config.json and done.json."""
  config = micro_config()
  config.student.steps, config.eval_every, config.eval_log_points = 3000, 3000, 45
  values = RunConfig.from_config(config).values
  steps = np.array(list(RunConfig.from_config(config).eval_settings.steps))
  t = np.maximum(steps, 1)  # the row of step 0 reads as step 1's
  converging = 0.8 * t**-0.15
  slows = np.where(t <= 200, converging, 0.8 * 200**-0.15 * (t / 200) ** -0.03)
  turn = 2e-4 * np.maximum(steps - 200, 0)
  for seed in seeds:
    run = root / "runs" / "abc" / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(values))
    for name, proxy, golden in (
      ("offline", slows, 1.0 + slows + turn),
      ("online_teacher", converging, 1.0 + converging),
    ):
      (run / name).mkdir()
      rows = [{"step": int(s), PROXY: p, GOLDEN: g} for s, p, g in zip(steps, proxy, golden)]
      (run / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
      (run / name / "done.json").write_text(json.dumps({"steps": 3000}))


def test_detector_eval_calibrates_on_some_seeds_and_scores_on_others(tmp_path):
  _write_study_runs(tmp_path)
  runs, skipped = detector_runs.finished_runs([str(tmp_path), str(tmp_path)], threshold_pct=5.0)
  assert skipped == []
  assert [(r.seed, r.outcome, r.proxy_never_rises) for r in runs] == [
    (0, "teacher_hacking", True),
    (0, "none", True),
    (1, "teacher_hacking", True),
    (1, "none", True),
  ]
  result = detector_scores.calibrate_and_test(runs, [0], [1])
  test = result["methods"]["slowdown (the detector)"]["test"]
  assert (test["true_positives"], test["false_positives"], test["true_negatives"]) == (1, 0, 1)
  assert test["recall_proxy_never_rises"] == 1.0 and test["lag_evals"][0] > 0
  assert result["methods"]["early stopping on the held-out proxy"]["test"]["recall"] == 0.0
  assert (
    detector_tables.table(result).splitlines()[2].startswith("| slowdown (the detector) | window ")
  )
  with pytest.raises(errors.RunError, match="overlap"):
    detector_scores.calibrate_and_test(runs, [0, 1], [1])


def _cut(path, keep):
  lines = path.read_text().splitlines(keepends=True)
  path.write_text("".join(lines[:keep]))


def test_detector_eval_never_scores_a_run_with_missing_rows_or_null_golden(tmp_path):
  _write_study_runs(tmp_path, seeds=(0, 1, 2))
  (tmp_path / "runs" / "abc" / "seed2" / "config.json").write_text("{garbage")
  seed0 = tmp_path / "runs" / "abc" / "seed0"
  _cut(seed0 / "offline" / "metrics.jsonl", 2)
  online = seed0 / "online_teacher" / "metrics.jsonl"
  rows = [json.loads(line) for line in online.read_text().splitlines()]
  online.write_text("".join(json.dumps({**r, GOLDEN: None}) + "\n" for r in rows))
  runs, skipped = detector_runs.finished_runs([str(tmp_path)], threshold_pct=5.0)
  assert [(r.seed, r.outcome) for r in runs] == [(1, "teacher_hacking"), (1, "none")]
  (cut, why_cut), (null, why_null), (unread, why_unread), _ = skipped
  assert cut == str(seed0 / "offline") and null == str(seed0 / "online_teacher")
  assert f"lacks the rows of {len(rows) - 2} evaluation(s)" in why_cut
  assert why_null == f"its {len(rows)} golden values ({GOLDEN}) are all null"
  assert unread.endswith("seed2/offline") and "cannot be read (JSONDecodeError" in why_unread


def test_detector_eval_refuses_when_no_run_can_be_scored(tmp_path):
  _write_study_runs(tmp_path, seeds=(0,))
  for regime in ("offline", "online_teacher"):
    _cut(tmp_path / "runs" / "abc" / "seed0" / regime / "metrics.jsonl", 3)
  with pytest.raises(
    errors.RunError, match=r"no finished study run .* that can be scored \(2 left out"
  ):
    detector_runs.finished_runs([str(tmp_path)], threshold_pct=5.0)


@pytest.mark.slow
def test_a_study_preempted_by_several_sigterms_exits_75(tmp_path):
  tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = tmp_path / "study.py"
  config.write_text(
    "\n".join(
      [
        "import sys",
        f"sys.path.insert(0, {tests!r})",
        "from conftest import micro_config",
        "from th_distill.study import study_config",
        "def get_config():",
        "  c = micro_config()",
        "  c.regimes = ('offline',)",
        "  c.teacher.steps = 100_000",
        "  return study_config('s', 's', c, {'only': {}}, (0,))",
        "",
      ]
    )
  )
  command = [sys.executable, "-m", "th_distill.study", f"--config={config}"]
  run = subprocess.Popen(
    [*command, f"--workdir={tmp_path / 'w'}"],
    cwd=os.path.dirname(tests),
    stderr=subprocess.PIPE,
    text=True,
  )
  seen = []
  while not any("Study run 1/1" in line for line in seen):
    line = run.stderr.readline()
    assert line, "".join(seen)
    seen.append(line)
  for _ in range(3):
    run.send_signal(signal.SIGTERM)
    time.sleep(0.2)
  _, rest = run.communicate(timeout=300)
  assert run.returncode == errors.EX_TEMPFAIL, rest
  last = [line for line in rest.splitlines() if line.strip()][-1]
  # Stopped in the first phase the signals reach: a sampling phase at its next call, or the
  # teacher's SFT at its next step (checkpointed).
  assert re.match(
    r"error: (stage 1: [^:]+: pre-empted \(SIGTERM\) before this phase's results were saved"
    r"|teacher SFT: pre-empted \(SIGTERM\); checkpointed at step)",
    last,
  ), rest
  assert "Traceback" not in rest
