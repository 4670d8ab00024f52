"""`python -m artv_jax.evaluate` on a tiny trained run: report, drift plot, contact sheet."""

from __future__ import annotations

import json
import subprocess
import sys

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


@pytest.mark.parametrize("args, message", [
    (["--workdir=TINY_RUN", "--captions=500"], "--captions must be in 1..144, got 500."),
    (["--workdir=/nonexistent"], "no checkpoints in '/nonexistent' (expected /nonexistent/checkpoints/<step>/)."),
    ([], "give --workdir (a training run)."),
    (["--workdir=TINY_RUN", "--history_level=0.01"],
     "config key 'sample.history_level' must be in [sample.ref_level, 1], got 0.01."),
])
def test_evaluate_rejects_bad_arguments_in_one_line(tiny_run, args, message):
    args = [a.replace("TINY_RUN", str(tiny_run)) for a in args]
    run = subprocess.run([sys.executable, "-m", "artv_jax.evaluate", *args], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [f"artv_jax.evaluate: error: {message}"], run.stderr


@pytest.mark.parametrize("captions", [1, 7, 144])
def test_eval_cases_spread_and_fixed(captions):
    from artv_jax import evaluate

    cases = evaluate.eval_cases(captions, 32)
    assert len({c["caption"] for c in cases}) == captions
    again = {c["caption"]: (c["x"], c["y"]) for c in evaluate.eval_cases(144, 32)}
    assert all(again[c["caption"]] == (c["x"], c["y"]) for c in cases)  # a case's start does not depend on the count
