"""`python -m artv_jax.sample` on a tiny trained run: text-, image-to-video, multi-prompt, continuation, bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO
from test_train import _env


@pytest.fixture
def workdir(tiny_run):
    return tiny_run


def _sample(workdir, *args, check=True):
    cmd = [sys.executable, "-m", "artv_jax.sample", f"--workdir={workdir}", "--steps=2", *args]
    out = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_multi_prompt_then_continuation_keeps_the_given_frames(workdir, tmp_path):
    from artv_jax import video_io

    out = tmp_path / "multi.mp4"
    _sample(workdir, "--prompt=a red square moving right on a black background", "--frames=2",
            "--prompt=a blue circle moving up on a white background", "--frames=2", f"--out={out}")
    video = video_io.read_video(str(out))
    assert video.shape == (4, 32, 32, 3)
    assert (tmp_path / "multi.gif").stat().st_size > 0

    gif = tmp_path / "given.gif"  # lossless: the continuation must keep these frames exactly
    given = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    video_io.write_gif(str(gif), given)
    cont = tmp_path / "cont.gif"
    _sample(workdir, "--prompt=a red square moving right on a black background", f"--video={gif}",
            "--num_frames=3", f"--out={cont}")
    got = video_io.read_video(str(cont))  # the gif is written 4x larger (nearest), for viewing
    assert got.shape == (3, 128, 128, 3)
    got = got[:, ::4, ::4]
    np.testing.assert_array_equal(got[:2], video_io.read_video(str(gif)))


@pytest.mark.parametrize("args, message", [
    ([], "give at least one --prompt"),
    (["--prompt=a", "--prompt=b"], "several --prompt values need --frames"),
    (["--prompt=a", "--frames=0"], "--frames must be positive"),
    (["--prompt=a", "--num_frames=-3"], "--num_frames must be positive"),
    (["--prompt=a", "--image=/no/such.png"], "no image file"),
    (["--prompt=a", "--image=WRONG_SIZE"], "are 24x20; this model makes 32x32 frames"),
    (["--prompt=a purple hexagon moving sideways on a plaid background"],
     "error: 'a purple hexagon moving sideways on a plaid background' has words outside this model's vocabulary: "
     "purple, hexagon, sideways, plaid; it knows: a, moving, on, background, red,"),
    (["--prompt=a red square moving right on a black background a blue circle"],
     "has 12 words; this model's text encoder takes at most 10."),
    (["--prompt=a", "--out=FILE/video.mp4"], "is a file, not a directory."),
])
def test_bad_input_is_one_line(workdir, tmp_path, args, message):
    if "--image=WRONG_SIZE" in args:
        from PIL import Image

        Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "small.png")
        args = [a.replace("WRONG_SIZE", str(tmp_path / "small.png")) for a in args]
    (tmp_path / "file").write_text("")
    args = [a.replace("=FILE/", f"={tmp_path / 'file'}/") for a in args]
    out = _sample(workdir, *args, check=False)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()  # once the model has loaded, its loggers may have written before
    errors = [line for line in lines if line.startswith("artv_jax.sample: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], out.stderr


def test_missing_workdir_is_one_stderr_line(tmp_path):
    """The error style of every CLI (runs.usage_errors): exactly one line, `<program>: error: <message>`, status 2."""
    missing = tmp_path / "no_run"
    out = subprocess.run([sys.executable, "-m", "artv_jax.sample", f"--workdir={missing}", "--prompt=x"], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"artv_jax.sample: error: no checkpoints in '{missing}' (expected {missing}/checkpoints/<step>/)."]
