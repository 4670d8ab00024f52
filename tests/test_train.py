"""The trainer end to end: sharded = unsharded, multi-process = single-process, exact resume, preemption, CLI.

Every run is a tiny shapes-world ART·V in its own process (tests/train_worker.py),
because the simulated device count is fixed when JAX starts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import REPO

WORKER = os.path.join(REPO, "tests", "train_worker.py")


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _start(workdir, *args, out=None):
    cmd = [sys.executable, WORKER, f"--workdir={workdir}", *args]
    if out:
        cmd.append(f"--out={out}")
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=600) -> dict:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{output[-4000:]}"
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, output[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def _run(workdir, *args, out=None) -> dict:
    return _finish(_start(workdir, *args, out=out))


def _params(path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return dict(f)


def _assert_params_close(a: dict, b: dict) -> None:
    """Equal up to float reassociation: 1e-4 of each tensor's scale, plus 3e-5 absolute.

    The absolute floor is for parameters whose true gradient is exactly zero (the CLIP attention's key bias:
    softmax ignores a constant added to every key): Adam turns the rounding noise of their gradient into
    sign-like updates of up to the learning rate, which differ between device layouts. 3e-5 is 2% of what
    the 3 steps move any parameter (the learning rate 1e-3 ramped up over 2 warm-up steps), so a real
    sharding error (a wrong slice, a missing all-reduce) still fails.
    """
    assert a.keys() == b.keys()
    for k in a:
        assert np.abs(a[k] - b[k]).max() <= 1e-4 * np.abs(b[k]).max() + 3e-5, k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """3 steps on one device, global batch 8."""
    d = tmp_path_factory.mktemp("ref")
    result = _run(d / "wd", "--devices=1", "--num_steps=3", out=d / "params.npz")
    return result, _params(d / "params.npz")


def test_sharded_step_on_8_devices_matches_one_device(reference, tmp_path):
    """(4, 2) mesh: batch over data x fsdp, parameters over fsdp; same loss and parameters as 1 device."""
    result = _run(tmp_path / "wd", "--devices=8", "--mesh=4,2", "--num_steps=3", out=tmp_path / "p.npz")
    ref_result, ref_params = reference
    assert result["checkpoint_step"] == ref_result["checkpoint_step"] == 3
    _assert_params_close(_params(tmp_path / "p.npz"), ref_params)
    assert result["loss"] == pytest.approx(ref_result["loss"], rel=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """Two jax.distributed processes x 4 devices = one process x 8 devices reading both hosts' data."""
    single = _run(tmp_path / "one", "--devices=8", "--num_steps=3", "--emulate_hosts=2", out=tmp_path / "one.npz")
    port = _free_port()
    common = ["--devices=4", "--num_steps=3", f"--coordinator=127.0.0.1:{port}", "--num_processes=2"]
    procs = [_start(tmp_path / "two", *common, f"--process_id={i}", out=tmp_path / "two.npz" if i == 0 else None)
             for i in range(2)]
    results = [_finish(p) for p in procs]
    assert results[0]["checkpoint_step"] == 3
    _assert_params_close(_params(tmp_path / "two.npz"), _params(tmp_path / "one.npz"))
    assert results[0]["loss"] == pytest.approx(single["loss"], rel=1e-4)


def _wait_for_checkpoint(workdir, step, proc, timeout=300):
    """Blocks until `checkpoints/<step>` is finalised (orbax renames its tmp dir last)."""
    path = os.path.join(workdir, "checkpoints", str(step))
    deadline = time.time() + timeout
    while not os.path.isdir(path):
        assert proc.poll() is None, f"the run ended before writing checkpoint {step}:\n{proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, f"no checkpoint {step} after {timeout} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_and_resume_gives_exactly_the_uninterrupted_parameters(tmp_path):
    steps = ["--num_steps=12", "--checkpoint_every=3"]
    _run(tmp_path / "straight", *steps, out=tmp_path / "straight.npz")

    proc = _start(tmp_path / "killed", *steps, "--step_sleep=0.5")
    _wait_for_checkpoint(tmp_path / "killed", 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    resumed = _run(tmp_path / "killed", *steps, out=tmp_path / "resumed.npz")
    assert 6 <= resumed["start_step"] < 12, resumed
    a, b = _params(tmp_path / "resumed.npz"), _params(tmp_path / "straight.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    workdir = tmp_path / "wd"
    proc = _start(workdir, "--num_steps=1000", "--checkpoint_every=2", "--step_sleep=0.2")
    _wait_for_checkpoint(workdir, 2, proc)
    proc.send_signal(signal.SIGTERM)
    result = _finish(proc, timeout=300)
    stopped = result["preempted_at"]
    assert 2 <= stopped < 1000
    from artv_jax import checkpoint

    saved = checkpoint.load_numpy(str(workdir), items=("step",))
    assert saved["checkpoint_step"] == stopped == int(saved["step"])


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    """An absurd learning rate blows the weights up; the run must stop loudly, not train on NaNs."""
    proc = _start(tmp_path / "wd", "--num_steps=20", "--checkpoint_every=1", "--learning_rate=1e30")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0
    assert "FloatingPointError: non-finite loss or gradients" in output, output[-3000:]
    from artv_jax import checkpoint

    saved = checkpoint.load_numpy(str(tmp_path / "wd"), items=("params", "step"))
    assert saved["checkpoint_step"] < 20
    from flax import traverse_util

    for name, value in traverse_util.flatten_dict(saved["params"], sep="/").items():
        assert np.all(np.isfinite(value)), name


def test_cli_trains_the_shapes_default_and_the_loss_falls(tmp_path):
    """`python -m artv_jax.train --config=configs/shapes.py` end to end, shortened; writes samples and scores.

    The text encoder is frozen, as the default freezes it: a scratch model's frozen parts must be saved.
    """
    workdir = tmp_path / "wd"
    cmd = [sys.executable, "-m", "artv_jax.train", "--config=configs/shapes.py", f"--workdir={workdir}",
           "--config.train.num_steps=40", "--config.train.warmup_steps=5",
           "--config.log_every=5", "--config.checkpoint.every=20", "--config.eval.num_videos=2",
           "--config.eval.num_frames=3", "--config.eval.batch=2", "--config.eval.num_steps=2",
           "--config.sample.num_frames=3", "--config.sample.num_steps=2", "--config.train.trainable=('artv',)",
           "--config.image_base.num_steps=0"]  # a scratch model (stage 1: tests/test_image_base.py)
    out = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    metrics = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [m["step"] for m in metrics] == list(range(5, 41, 5))
    first, last = np.mean([m["loss"] for m in metrics[:2]]), np.mean([m["loss"] for m in metrics[-2:]])
    assert last < 0.8 * first, [m["loss"] for m in metrics]
    for name in ("final.gif", "final.mp4"):
        assert (workdir / "samples" / name).stat().st_size > 0
    scores = json.loads((workdir / "eval.json").read_text())
    assert scores["step"] == 40 and 0.0 <= scores["colour_accuracy"] <= 1.0
    assert os.listdir(workdir / "tensorboard")
    assert sorted(os.listdir(workdir / "checkpoints")) == ["20", "40"]

    # A text encoder frozen at initialisation exists only in the run: each checkpoint saves it, unchanged, and
    # sampling loads it from there (the UNet and adapter from the EMA). Trained, it would move far more.
    import jax
    from flax import traverse_util

    from artv_jax import checkpoint, runs

    comps, params, config = runs.load(str(workdir))
    assert tuple(config.train.trainable) == ("artv",) and set(params) == {"artv", "text"}
    init_text = comps.init(jax.random.split(jax.random.PRNGKey(config.seed), 3)[0])["text"]
    flat = lambda tree: traverse_util.flatten_dict(tree, sep="/")
    saved_20, saved_40 = (flat(checkpoint.load_frozen(str(workdir), s)["text"]) for s in (20, 40))
    assert saved_20.keys() == saved_40.keys() == flat(params["text"]).keys() == flat(init_text).keys()
    for k, v in flat(init_text).items():
        np.testing.assert_array_equal(saved_40[k], saved_20[k], err_msg=k)
        np.testing.assert_array_equal(flat(params["text"])[k], saved_40[k], err_msg=k)
        # the run initialised under jit with shardings, this eagerly: equal up to float32 rounding
        np.testing.assert_allclose(saved_20[k], v, rtol=1e-5, atol=1e-7, err_msg=k)
    ema = checkpoint.load_numpy(str(workdir), 40, items=("ema_params",))["ema_params"]
    for k, v in flat(ema["artv"]).items():
        np.testing.assert_array_equal(flat(params["artv"])[k], v, err_msg=k)

    # A checkpoint whose frozen parts were not saved (as before they were) is refused by name, not sampled with
    # a text encoder drawn afresh.
    import shutil

    shutil.rmtree(workdir / "checkpoints" / "40" / "frozen")
    with pytest.raises(runs.UsageError, match=r"\['text'\].*frozen"):
        runs.load(str(workdir))
