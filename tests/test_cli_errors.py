"""Bad input to the command-line tools ends in `artv_jax.<cli>: error: <one line>` and exit status 2, checked in
the order a new user meets it: flags and config first, then paths and data, then the device mesh.

Nothing here trains or loads a model: every case fails before that (a few seconds each, mostly JAX's import).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import REPO
from test_train import _env


def _one_line_error(program: str, *args, cwd=REPO) -> str:
    out = subprocess.run([sys.executable, "-m", program, *args], cwd=cwd, env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith(f"{program}: error: ")]
    assert len(errors) == 1 and out.stderr.splitlines()[-1] == errors[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    return errors[0][len(f"{program}: error: "):]


@pytest.mark.parametrize("args, message", [
    (["--config.train.num_stepz=3"],
     '--config.train.num_stepz=3: the config has no key \'num_stepz\'. Did you mean "num_steps" instead of '
     '"num_stepz"?'),
    (["--config=configs/shapes.py", "--config.trian.num_steps=3"],
     '--config.trian.num_steps=3: the config has no key \'trian\'. Did you mean "train" instead of "trian"?'),
    (["--config=configs/nope.py"],
     "--config=configs/nope.py: the config file does not load: [Errno 2] No such file or directory: "
     "'configs/nope.py'"),
    (["--config=configs/webvid.py:300"],
     "flag --config=configs/webvid.py:300: ValueError: configs/webvid.py takes ':256' or ':512', got '300'."),
    (["--config.train.num_steps=many"], "flag --config.train.num_steps=many: invalid literal for int()"),
    (["--config.sample.prompts=('a red square moving right on a black background','a purple square')"],
     "config key 'sample.prompts': 'a purple square' has words outside this model's vocabulary: purple; it knows: "),
])
def test_train_config_errors(tmp_path, args, message):
    line = _one_line_error("artv_jax.train", *args, f"--workdir={tmp_path / 'wd'}")
    assert line.startswith(message), line
    assert not (tmp_path / "wd").exists()  # nothing started


def test_train_workdir_that_is_a_file(tmp_path):
    (tmp_path / "run").write_text("")
    line = _one_line_error("artv_jax.train", f"--workdir={tmp_path / 'run'}")
    assert line == f"--workdir={str(tmp_path / 'run')!r} is a file; give a directory (new, or a run to resume)."


def test_webvid_on_one_device_names_the_pretrained_model_and_the_data_before_the_mesh(tmp_path):
    """configs/webvid.py wants a (-1, 4) mesh; the paths it needs are named first, each in one line."""
    wd = f"--workdir={tmp_path / 'wd'}"
    line = _one_line_error("artv_jax.train", "--config=configs/webvid.py", wd)
    assert line.startswith("WebVid runs start from Stable Diffusion: set --config.model.pretrained to a local "
                           "diffusers SD 1.x/2.x directory")
    line = _one_line_error("artv_jax.train", "--config=configs/webvid.py", wd,
                           f"--config.model.pretrained={tmp_path / 'sd'}")
    assert line.startswith(f"--config.model.pretrained={str(tmp_path / 'sd')!r} does not exist: give a diffusers "
                           f"text-to-image directory")
    (tmp_path / "sd" / "unet").mkdir(parents=True)  # found; the data is checked next, still before the mesh
    line = _one_line_error("artv_jax.train", "--config=configs/webvid.py", wd,
                           f"--config.model.pretrained={tmp_path / 'sd'}", f"--config.data.data_dir={tmp_path}")
    assert line.startswith(f"webvid/256/1.0.0 at {tmp_path}/webvid/256/1.0.0 has no split 'train'")
    assert line.endswith(f"--config.data.data_dir={str(tmp_path)!r} must hold the prepared data set (docs/data.md).")
    assert not (tmp_path / "wd").exists()


def test_a_mesh_the_devices_do_not_fill_names_the_flag_to_set():
    import jax

    from artv_jax import config as config_lib, runs

    n = jax.device_count()
    config = config_lib.validate({"mesh": {"shape": (-1, n + 1)}})
    with pytest.raises(runs.UsageError) as e:
        runs.check_mesh(config)
    assert str(e.value) == (f"{n} devices do not divide into a mesh of shape (-1, {n + 1}): set "
                            f"--config.mesh.shape=(data,fsdp) to fit them, e.g. --config.mesh.shape='(-1,1)' (all "
                            f"{n} for data parallelism).")
    config = config_lib.validate({"mesh": {"shape": (-1, 1)}, "train": {"global_batch": n + 1}})
    if n > 1:
        with pytest.raises(runs.UsageError, match="set --config.train.global_batch"):
            runs.check_mesh(config)
    else:
        runs.check_mesh(config)


@pytest.mark.parametrize("program", ["artv_jax.train", "artv_jax.sample", "artv_jax.export", "artv_jax.evaluate",
                                     "artv_jax.metrics.fvd_ucf101", "artv_jax.metrics.clipsim_msrvtt"])
def test_an_unknown_flag_is_one_line_for_every_tool(program):
    assert _one_line_error(program, "--workdirr=x") == "Unknown command line flag 'workdirr'. Did you mean: workdir ?"
