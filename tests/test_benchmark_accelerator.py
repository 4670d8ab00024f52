"""benchmarks/accelerator.py on the CPU: every case at tiny sizes (--smoke), a clean stop at the budget and on
SIGTERM, no TensorFlow anywhere, and the chip table behind MFU."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "accelerator.py"


def _cases_module():
    """benchmarks/accelerator_cases.py, loaded by path (benchmarks/ is not put on this process's sys.path)."""
    name = "_benchmark_accelerator_cases"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "accelerator_cases.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)  # its dataclass needs it registered
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def _torch_installed() -> bool:
    return all(importlib.util.find_spec(m) for m in ("torch", "diffusers", "transformers"))


def _run(tmp_path, *flags, timeout=600):
    out = tmp_path / "accelerator.json"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    return proc, json.loads(out.read_text()), time.monotonic() - start


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run of every case (JAX's compilation cache at its default, as the train tests use it)."""
    proc, summary, _ = _run(tmp_path_factory.mktemp("smoke"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, summary


def test_runner_imports_no_tensorflow_jax_or_torch():
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import accelerator; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'jax', 'torch', 'diffusers'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_peak_table_and_flop_counts():
    m = _cases_module()
    kinds = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H100 PCIe": 756.0, "NVIDIA H200": 989.0,
             "NVIDIA A100-SXM4-80GB": 312.0, "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5p": 459.0,
             "TPU v5": 459.0, "TPU v6 lite": 918.0, "cpu": None, "NVIDIA GeForce RTX 4090": None}
    assert {k: m.peak_tflops(k) for k in kinds} == kinds
    assert m.xla_flops({"flops": 3.0}) == 3.0
    assert m.xla_flops([{"flops": 1.0}, {"flops": 2.0}]) == 3.0  # older JAX: one dict per program
    assert m.xla_flops({}) is None and m.xla_flops(None) is None


def test_smoke_runs_every_case(smoke):
    proc, summary = smoke
    cases = summary["cases"]
    names = list(_cases_module().CASES)
    assert list(cases) == names and summary["meta"]["cases"] == names
    torch_ok = _torch_installed()
    for name, r in cases.items():
        if name.startswith("torch") and not torch_ok:
            assert r["status"] == "error" and "torch not installed" in r["error"], r
            continue
        assert r["status"] == "ok", (name, r)
        assert r["tensorflow_imported"] is False, name
        assert r["torch_imported"] is r["kind"].startswith("torch"), name
        if r["kind"] in ("sd_step", "shapes_step"):
            assert r["step_s"] > 0 and r["pipelined_step_s"] > 0 and r["compile_s"] > 0 and r["examples_s"] > 0
            assert r["flops"] > 0 and r["flops_compiled"] > 0 and r["tflops_s"] > 0, name
            assert r["params_trainable"] > 0 and r["compiled_mem_gib"] > 0 and r["timed_steps"] >= 2
            assert r["nonfinite"] == 0 and r["mfu"] is None  # a CPU has no bf16 peak in the table
        elif r["kind"] == "sampler":
            assert r["s_per_frame"] > 0 and r["compilations"] == 1, (name, r)  # timed videos did not recompile
        else:
            assert r["step_s" if r["kind"] == "torch_step" else "s_per_frame"] > 0, (name, r)
    assert cases["sd_step_b8"]["remat"] is False and cases["shapes_step"]["steps_s"] > 0
    b32 = cases["sd_step_b32"]  # the smoke run compiles it with remat: MFU's FLOPs then come from a plain lowering
    assert b32["remat"] is True and b32["flops_counted"] == "the step lowered without remat"
    if torch_ok:
        assert set(summary["ratios"]) == {"sd_step_b8/torch_step_b8", "sd_step_b8/torch_compile_step_b8",
                                          "sampler_b1/torch_sampler_b1", "sampler_b8/torch_sampler_b8"}
        assert all(v > 0 for v in summary["ratios"].values())
        assert cases["torch_step_b8"]["ours_over_torch"] == summary["ratios"]["sd_step_b8/torch_step_b8"]
        assert cases["torch_step_b8"]["torch_counted_flops"] > 0
    meta = summary["meta"]
    assert meta["complete"] is (torch_ok or not any(n.startswith("torch") for n in names))
    assert meta["tensorflow_imported"] is False and meta["device"]["platform"] == "cpu"
    assert "SMOKE RUN" in proc.stdout and "not measured:" in proc.stdout
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == summary  # the last line is the JSON written


def test_budget_stops_cleanly_with_partial_results(tmp_path):
    names = ["shapes_step", "sd_step_b8", "torch_step_b8"]
    proc, summary, wall = _run(tmp_path, "--cases", ",".join(names), "--budget_s", "10", timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = summary["cases"]
    assert list(cases) == names
    assert {r["status"] for r in cases.values()} <= {"ok", "interrupted", "skipped"}
    assert cases["torch_step_b8"]["status"] == "skipped"  # no time left for a second process
    assert summary["meta"]["wall_s"] < 10 and summary["meta"]["complete"] is False
    assert wall < 10 + 5  # the interpreter's start and exit around it
    assert "the rest: python benchmarks/accelerator.py --cases" in proc.stdout
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == summary


def test_without_torch_the_torch_cases_say_so(tmp_path):
    fake = tmp_path / "no_torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('this machine has no torch')\n")
    out = tmp_path / "accelerator.json"
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cases", "torch_step_b8,torch_sampler_b1", "--out",
                           str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    cases = json.loads(out.read_text())["cases"]
    assert cases["torch_step_b8"]["status"] == "error"
    assert cases["torch_sampler_b1"]["status"] == "skipped"  # not tried again
    assert all("torch not installed" in r["error"] for r in cases.values()), cases


def test_sigterm_stops_cleanly(tmp_path):
    out = tmp_path / "accelerator.json"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--smoke", "--cases", "sd_step_b8,sampler_b1",
                             "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    first = proc.stdout.readline()  # "[1/2] sd_step_b8,sampler_b1 (0 s)": the case's process has started
    assert first.startswith("[1/2]"), first
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest[-3000:]
    summary = json.loads(out.read_text())
    assert summary["meta"]["stopped"].startswith("SIGTERM")
    assert summary["cases"]["sd_step_b8"]["status"] == "interrupted"
    assert summary["cases"]["sampler_b1"]["status"] == "skipped"
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_case_process(p)]


def _is_case_process(pid: str) -> bool:
    """A process of this test's cases still alive (it should have been killed with its group)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
    except OSError:
        return False
    return b"--case" in cmd and b"sd_step_b8,sampler_b1" in cmd
