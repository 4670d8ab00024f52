"""The zero-shot metric CLIs: missing inputs end in one line and exit 2; prompts and captions are read right.

Generation is not run here (the metrics' pieces have their own parity tests).
"""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

from artv_jax.metrics.clipsim_msrvtt import find_annotations, read_test_captions
from artv_jax.metrics.fvd_ucf101 import class_prompt, list_ucf101


def _run(module, *args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", f"artv_jax.metrics.{module}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"artv_jax.metrics.{module}: error: ")
    return lines[0]


def _fake_ucf(root):
    (root / "ApplyEyeMakeup").mkdir(parents=True)
    (root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi").write_bytes(b"")
    return root


def test_fvd_missing_inputs(tmp_path):
    line = _run("fvd_ucf101", f"--workdir={tmp_path}", f"--ucf101={tmp_path / 'nope'}", "--i3d=x.pt")
    assert f"no UCF-101 directory at '{tmp_path / 'nope'}'" in line and "UCF101.rar" in line
    ucf = _fake_ucf(tmp_path / "UCF-101")
    line = _run("fvd_ucf101", f"--workdir={tmp_path}", f"--ucf101={ucf}", f"--i3d={tmp_path / 'rgb.pt'}")
    assert f"no I3D weights at '{tmp_path / 'rgb.pt'}'" in line and "rgb_imagenet.pt" in line
    (tmp_path / "rgb.pt").write_bytes(b"")
    line = _run("fvd_ucf101", f"--ucf101={ucf}", f"--i3d={tmp_path / 'rgb.pt'}")
    assert "give --workdir, a training run's directory" in line
    line = _run("fvd_ucf101", f"--workdir={tmp_path / 'run'}", f"--ucf101={ucf}", f"--i3d={tmp_path / 'rgb.pt'}")
    assert f"no checkpoints in '{tmp_path / 'run'}' (expected {tmp_path / 'run'}/checkpoints/<step>/)" in line


def test_clipsim_missing_inputs(tmp_path):
    line = _run("clipsim_msrvtt", f"--workdir={tmp_path}", f"--msrvtt={tmp_path}", f"--clip={tmp_path / 'clip'}")
    assert f"no MSR-VTT annotations at '{tmp_path}'" in line and "test_videodatainfo.json" in line
    (tmp_path / "test_videodatainfo.json").write_text(json.dumps({"videos": [], "sentences": []}))
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text("{}")
    line = _run("clipsim_msrvtt", f"--workdir={tmp_path}", f"--msrvtt={tmp_path}", f"--clip={tmp_path / 'clip'}")
    assert "no CLIP model at" in line and "(vocab.json, merges.txt, model.safetensors missing)" in line


def test_class_prompts_and_listing(tmp_path):
    assert class_prompt("ApplyEyeMakeup") == "apply eye makeup"
    assert class_prompt("YoYo", "a person playing {}") == "a person playing yo yo"
    assert class_prompt("PlayingDaf") == "playing daf"
    assert class_prompt("Skijet") == "skijet"
    assert class_prompt("JumpingJack") == "jumping jack"
    ucf = _fake_ucf(tmp_path)
    (ucf / "Empty").mkdir()
    assert list(list_ucf101(str(ucf))) == ["ApplyEyeMakeup"]


def test_msrvtt_test_captions(tmp_path):
    data = {"videos": [{"video_id": "video9", "split": "test"}, {"video_id": "video10", "split": "test"},
                       {"video_id": "video1", "split": "train"}],
            "sentences": [{"video_id": "video10", "caption": "b "}, {"video_id": "video1", "caption": "x"},
                          {"video_id": "video9", "caption": "a"}, {"video_id": "video10", "caption": "c"}]}
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps(data))
    path = find_annotations(str(tmp_path))
    assert read_test_captions(path) == [("video9", "a"), ("video10", "b"), ("video10", "c")]
    assert read_test_captions(path, "first") == [("video9", "a"), ("video10", "b")]
    with pytest.raises(ValueError, match="no test-split captions"):
        (tmp_path / "t.json").write_text(json.dumps({**data, "videos": data["videos"][2:]}))
        read_test_captions(str(tmp_path / "t.json"))
