"""Workdir paths: URLs stay URLs, local files are written and appended, checkpoint paths are located."""

from __future__ import annotations

import os

import pytest

from artv_jax import checkpoint, storage


def test_urls_are_not_made_local():
    assert storage.resolve("gs://bucket/runs/a/") == "gs://bucket/runs/a"
    assert storage.join("gs://bucket/runs/a", "checkpoints") == "gs://bucket/runs/a/checkpoints"
    assert checkpoint.checkpoint_dir("gs://bucket/run") == "gs://bucket/run/checkpoints"
    assert storage.resolve("rel/dir") == os.path.join(os.getcwd(), "rel", "dir")


def test_local_text_append_log_and_local_file(tmp_path):
    path = str(tmp_path / "a" / "b.txt")
    storage.write_text(path, "x")
    assert storage.read_text(path) == "x" and storage.list_dir(str(tmp_path / "a")) == ["b.txt"]
    assert storage.list_dir(str(tmp_path / "missing")) == []

    log_path = str(tmp_path / "run" / "metrics.jsonl")
    for lines in (["1", "2"], ["3"]):  # a resumed run appends
        log = storage.AppendLog(log_path)
        for line in lines:
            log.write_line(line)
        log.close()
    assert open(log_path).read() == "1\n2\n3\n"

    with storage.local_file(str(tmp_path / "s" / "v.bin")) as local:
        open(local, "wb").write(b"abc")
    assert (tmp_path / "s" / "v.bin").read_bytes() == b"abc"


def test_locate_accepts_a_workdir_its_checkpoints_or_a_step(tmp_path):
    step_dir = tmp_path / "wd" / "checkpoints" / "40"
    (step_dir / "config").mkdir(parents=True)
    wd = str(tmp_path / "wd")
    assert checkpoint.locate(wd) == (wd, None)
    assert checkpoint.locate(wd + "/checkpoints", 20) == (wd, 20)
    assert checkpoint.locate(str(step_dir)) == (wd, 40)
    with pytest.raises(ValueError, match="step 40, but step 20"):
        checkpoint.locate(str(step_dir), 20)
