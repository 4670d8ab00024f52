"""A checkpoint with a file cut short or lost: one line and the other steps for the tools, a clean fallback for training.

One tiny run (tests/train_worker.py's config, through `python -m artv_jax.train`) with checkpoints at steps 1, 2
and 3; each test damages a copy of it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import traverse_util

from helpers import REPO
from test_train import _env

CONFIG = f'''
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
from train_worker import tiny_config


def get_config():
    c = tiny_config(num_steps=3, checkpoint_every=1)
    c.checkpoint.max_to_keep = 3
    return c
'''


def _our_tracebacks(stderr: str) -> list[str]:
    """Traceback frames in our code. A user error must end as one line, never as a traceback through artv_jax.
    Tracebacks with no frame of ours can still appear once a read has failed: tensorstore's reader threads and
    orbax's abandoned read coroutines print them past `checkpoint._quiet_after_failed_read` ("Event loop is
    closed", "Encountered error while reading array index"), a race seen under load in CI."""
    return [line for line in stderr.splitlines() if line.lstrip().startswith('File "') and "/artv_jax/" in line]


def _train(config: Path, workdir: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "artv_jax.train", f"--config={config}", f"--workdir={workdir}"]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)


def _params(workdir: Path) -> dict[str, np.ndarray]:
    from artv_jax import checkpoint

    saved = checkpoint.load_numpy(str(workdir), items=("params",))
    assert saved["checkpoint_step"] == 3
    return traverse_util.flatten_dict(saved["params"], sep="/")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(config file, workdir, final parameters) of the uninterrupted run."""
    root = tmp_path_factory.mktemp("damage")
    config = root / "tiny.py"
    config.write_text(CONFIG)
    out = _train(config, root / "wd")
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in (root / "wd" / "checkpoints").iterdir()) == ["1", "2", "3"]
    return config, root / "wd", _params(root / "wd")


def _copy(run, tmp_path) -> Path:
    shutil.copytree(run[1], tmp_path / "wd")
    return tmp_path / "wd"


def _largest_data_file(step_dir: Path) -> Path:
    return max((step_dir / "state" / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)


def _digests(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow  # a second training run (the resumed one): well over 30 s on CPU
def test_resume_skips_unreadable_checkpoints_keeps_them_and_equals_the_uninterrupted_run(run, tmp_path):
    """Step 3 has a file cut in half, step 2 has one deleted: training resumes from step 1, reports each in one
    line, moves both unchanged to checkpoints_damaged/, and ends with the uninterrupted run's parameters."""
    config, _, straight = run
    workdir = _copy(run, tmp_path)
    checkpoints = workdir / "checkpoints"
    cut = _largest_data_file(checkpoints / "3")
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    _largest_data_file(checkpoints / "2").unlink()
    before = {s: _digests(checkpoints / s) for s in ("2", "3")}

    out = _train(config, workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not _our_tracebacks(out.stderr), out.stderr[-3000:]
    reports = [line for line in out.stderr.splitlines() if "does not read" in line]
    assert len(reports) == 2, out.stderr[-3000:]
    assert f"checkpoint step 3 ({checkpoints / '3'}) does not read: OUT_OF_RANGE: Error reading" in reports[0]
    assert f"checkpoint step 2 ({checkpoints / '2'}) does not read: " in reports[1]
    for step, line in zip("32", reports):
        assert line.endswith(f"Moved it, unchanged, to {workdir / 'checkpoints_damaged' / step}; resuming from step 1.")
        assert _digests(workdir / "checkpoints_damaged" / step) == before[step]  # never deleted, not changed
    assert "resumed from step 1" in out.stderr

    assert sorted(p.name for p in checkpoints.iterdir()) == ["1", "2", "3"]  # written again by the resumed run
    resumed = _params(workdir)
    assert resumed.keys() == straight.keys()
    for k in straight:
        np.testing.assert_array_equal(resumed[k], straight[k], err_msg=k)


def test_resume_stops_in_one_line_when_no_checkpoint_reads_and_moves_nothing(run, tmp_path):
    config = run[0]
    workdir = _copy(run, tmp_path)
    for step in ("1", "2", "3"):
        cut = _largest_data_file(workdir / "checkpoints" / step)
        cut.write_bytes(cut.read_bytes()[:100])
    before = _digests(workdir / "checkpoints")

    out = _train(config, workdir)
    assert out.returncode == 2, out.stderr[-3000:]
    assert not _our_tracebacks(out.stderr), out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("artv_jax.train: error: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert errors[0].startswith(f"artv_jax.train: error: no checkpoint in {workdir / 'checkpoints'} reads: "
                                f"checkpoint step 3 ")
    assert "checkpoint step 2 (" in errors[0] and "checkpoint step 1 (" in errors[0]
    assert not (workdir / "checkpoints_damaged").exists() and _digests(workdir / "checkpoints") == before


def test_sample_names_the_unreadable_step_and_the_steps_there_are(run, tmp_path):
    """Every file of step 3's database emptied: many reads fail at once (orbax's "Event loop is closed" cascade
    without the fix); the tool says which step does not read and which others there are, in one line."""
    workdir = _copy(run, tmp_path)
    step_dir = workdir / "checkpoints" / "3"
    for f in (step_dir / "state" / "ocdbt.process_0" / "d").iterdir():
        f.write_bytes(b"")
    cmd = [sys.executable, "-m", "artv_jax.sample", f"--workdir={workdir}",
           "--prompt=a red square moving right on a black background", f"--out={tmp_path / 'v.mp4'}"]
    out = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 2
    assert not _our_tracebacks(out.stderr), out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("artv_jax.sample: error: ")]
    assert len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith(f"artv_jax.sample: error: checkpoint step 3 ({step_dir}) does not read: "
                               f"OUT_OF_RANGE: Error reading \"ema_params.")
    assert lines[0].endswith("; the run's other checkpoints are steps [1, 2] (choose one with --step).")
    assert not (workdir / "checkpoints_damaged").exists()  # the tools never move anything


def test_export_and_evaluate_load_through_the_same_check_and_step_picks_a_good_one(run, tmp_path):
    """The step's metadata file lost (the tools share `runs.load`); `--step` of another step loads."""
    from artv_jax import export, runs

    workdir = _copy(run, tmp_path)
    (workdir / "checkpoints" / "3" / "state" / "_METADATA").unlink()
    message = (f"checkpoint step 3 ({workdir / 'checkpoints' / '3'}) does not read: FileNotFoundError: no metadata "
               f"for the item 'state' (its _METADATA file is missing); the run's other checkpoints are steps [1, 2] "
               f"(choose one with --step).")
    with pytest.raises(runs.UsageError) as e:
        export.export_run(str(workdir), str(tmp_path / "out"))
    assert str(e.value) == message
    _, params, config = runs.load(str(workdir), step=2)
    assert config.train.num_steps == 3 and "artv" in params
    (workdir / "checkpoints" / "3" / "config" / "metadata").unlink()  # the config too: named the same way
    with pytest.raises(runs.UsageError, match=r"checkpoint step 3 \(.*\) does not read: FileNotFoundError: no JSON "
                                              r"config in .*; the run's other checkpoints are steps \[1, 2\]"):
        runs.load(str(workdir))
