"""`python -m artv_jax.evaluate` on a tiny trained run: report, drift plot, contact sheet."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO
from test_train import _env


def test_evaluate_cli_writes_report_and_figures(tiny_run, tmp_path):
    from PIL import Image

    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "artv_jax.evaluate", f"--workdir={tiny_run}", "--captions=3", "--lengths=2,4",
           "--steps=2", "--batch=3", "--ref_guidance=1.5", "--history_level=0.5", "--modes=t2v,i2v,tf",
           f"--out={out}"]
    run = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["num_captions"] == 3 and report["lengths"] == [2, 4]
    assert report["sampler"]["ref_guidance"] == 1.5 and report["sampler"]["history_level"] == 0.5
    for mode in ("t2v", "i2v"):
        assert sorted(report[mode]["by_length"]) == ["2", "4"]
        assert report[mode]["by_length"]["4"]["num_videos"] == 3
        assert all(len(report[mode]["curves"][k]) == 4 for k in report[mode]["curves"])
    # Image-to-video keeps the exactly rendered first frame: the reader must accept all of it.
    assert report["i2v"]["curves"]["frame_ok"][0] == 1.0
    assert "position_error" in report["i2v"]["by_length"]["4"]  # i2v knows the start position
    assert "position_error" not in report["t2v"]["by_length"]["4"]
    assert report["i2v"]["curves"]["clean"][0] == 1.0  # clean frames per frame; the rendered frame 0 is clean
    # Teacher-forced: 3 videos x 3 steps each from the truth, scored as one-step predictions.
    tf = report["tf"]["by_length"]["4"]
    assert tf["num_steps"] == 9 and report["tf"]["by_length"]["2"]["num_steps"] == 3
    assert 0.0 <= tf["travel_accuracy"] <= 1.0 and tf["position_error"] >= 0.0
    assert "tf  " in run.stdout and "travel" in run.stdout
    assert Image.open(out / "drift.png").size == (1200, 300)
    assert Image.open(out / "samples.png").size[0] > 0
    # Per-video scores over the longest rollout, on named cases; a report against itself differs by nothing.
    assert len(report["captions"]) == 3
    for mode in ("t2v", "i2v"):
        per_video = report[mode]["per_video"]
        assert all(len(v) == 3 for v in per_video.values())
        assert sum(per_video["clean_fraction"]) / 3 == pytest.approx(report[mode]["by_length"]["4"]["clean_fraction"],
                                                                     abs=1e-4)
    path = str(out / "report.json")
    run = subprocess.run([sys.executable, "-m", "artv_jax.evaluate", f"--compare={path},{path}"], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "i2v clean_fraction" in run.stdout and "t2v frame_accuracy" in run.stdout
    assert "*" not in run.stdout.split("\n", 1)[1] and "+0.000 ± 0.000" in run.stdout


@pytest.mark.parametrize("args, message", [
    (["--workdir=TINY_RUN", "--captions=500"], "--captions must be in 1..144, got 500."),
    (["--workdir=/nonexistent"], "no checkpoints in '/nonexistent' (expected /nonexistent/checkpoints/<step>/)."),
    ([], "give --workdir (a training run)."),
    (["--compare=a.json"], "--compare takes two report.json paths (BASE,OTHER), got 1."),
    (["--workdir=TINY_RUN", "--history_level=0.01"],
     "config key 'sample.history_level' must be in [sample.ref_level, 1], got 0.01."),
])
def test_evaluate_rejects_bad_arguments_in_one_line(tiny_run, args, message):
    args = [a.replace("TINY_RUN", str(tiny_run)) for a in args]
    run = subprocess.run([sys.executable, "-m", "artv_jax.evaluate", *args], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [f"artv_jax.evaluate: error: {message}"], run.stderr


def _report(captions, per_video):
    return {"num_captions": len(captions), "captions": captions, "lengths": [4], "i2v": {"per_video": per_video}}


def test_paired_gaps_pair_video_by_video():
    from artv_jax import evaluate

    captions = ["a", "b", "c", "d"]
    base = _report(captions, {"clean_fraction": [0.5, 0.2, 0.9, 0.4], "position_error": [1.0, None, 2.0, 3.0]})
    other = _report(captions, {"clean_fraction": [0.6, 0.4, 0.9, 0.7], "position_error": [2.0, 5.0, None, 3.0]})
    gaps = evaluate.paired_gaps(base, other)
    d = np.array([0.1, 0.2, 0.0, 0.3])
    assert gaps["clean_fraction"]["gap"] == pytest.approx(d.mean())
    assert gaps["clean_fraction"]["se"] == pytest.approx(d.std(ddof=1) / 2) and gaps["clean_fraction"]["n"] == 4
    # Pairs where either run has no score drop out: (1 - 2), (3 - 3) are left.
    assert gaps["position_error"] == {"gap": pytest.approx(0.5), "se": pytest.approx(0.5), "n": 2}
    # Every video 0.1 better: no noise at all, where the unpaired means would differ by 0.1 within a wide spread.
    shifted = _report(captions, {"clean_fraction": [x + 0.1 for x in base["i2v"]["per_video"]["clean_fraction"]]})
    assert evaluate.paired_gaps(base, shifted)["clean_fraction"]["se"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(captions=["a", "b", "x"]), "not on the same cases"),
    (lambda r: r.update(lengths=[8]), "not on the same cases"),
    (lambda r: r["i2v"].pop("per_video"), "other report has no per-video 'i2v' scores"),
    (lambda r: r.pop("lengths"), "other report is not an evaluate report.json"),
])
def test_paired_gaps_refuse_reports_that_do_not_pair(change, message):
    from artv_jax import evaluate

    base = _report(["a", "b", "c"], {"clean_fraction": [0.5, 0.2, 0.9]})
    other = _report(["a", "b", "c"], {"clean_fraction": [0.5, 0.2, 0.9]})
    change(other)
    with pytest.raises(ValueError, match=message):
        evaluate.paired_gaps(base, other)


@pytest.mark.parametrize("captions", [1, 7, 144])
def test_eval_cases_spread_and_fixed(captions):
    from artv_jax import evaluate

    cases = evaluate.eval_cases(captions, 32)
    assert len({c["caption"] for c in cases}) == captions
    again = {c["caption"]: (c["x"], c["y"]) for c in evaluate.eval_cases(144, 32)}
    assert all(again[c["caption"]] == (c["x"], c["y"]) for c in cases)  # a case's start does not depend on the count
