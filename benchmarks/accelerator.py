"""ART·V on one GPU/TPU chip: the SD-1.5-sized training step and its MFU, the sampler against PyTorch, the shapes step.

    timeout 560 python benchmarks/accelerator.py --budget_s 480 --out accelerator.json   # on one GPU or TPU
    python benchmarks/accelerator.py --smoke --out /tmp/smoke.json                      # every case, tiny, on a CPU
    python benchmarks/accelerator.py --cases sd_step_b16,sd_step_b32 --profile /tmp/trace  # some cases (see --help)

The cases (benchmarks/accelerator_cases.py), most important first: the default
order, so that `--budget_s` drops the least important.

- sd_step_bN: ART·V's training step built from Stable Diffusion 1.5's UNet, VAE
  and CLIP ViT-L/14 text encoder configurations (exact shapes, random weights,
  nothing downloaded), 256x256 frames (32x32x4 latents), VAE and text encoder
  frozen inside the step as in training (`configs/webvid.py`), bf16 compute over
  fp32 master weights, batch N on one chip, remat only where the compiled step
  would not fit (`--remat auto`).
- torch_step_b8, torch_compile_step_b8: the same step in PyTorch/diffusers
  (`make_torch_step` of benchmarks/train_step.py) under bf16 autocast, eager and
  with the UNet `torch.compile`d.
- sampler_bN[_f64], torch_sampler_bN: 25 DDIM steps with classifier-free
  guidance (two UNet passes per step), image-to-video from a random first
  latent, 16 (64) generated frames, latents only (no VAE decode), bf16 weights
  and compute on both sides: `sampling.sample_video` (`lax.scan` over chunks of
  8 frames) against `artv_jax/torch_sampler.py`.
- shapes_step: the shipped default's step (`configs/shapes.py`, float32, batch 16).

Each case runs in a process of its own, one after another: its peak device
memory is its own, an out-of-memory error or a broken CUDA context is that
case's error and the next case runs, PyTorch gets the chip without JAX's
allocator pool, and this process (which imports neither JAX nor torch) stops
the running case before `--budget_s`, then prints and writes what it has. The
smoke run groups its cases into one JAX and one torch process, to start fewer.
JAX's persistent compilation cache is on (`--cache_dir`). No TensorFlow is
imported anywhere; a machine without torch records "torch not installed" for
the torch cases.

Prints a line per case, then the tables and one JSON object (also written to
`--out` after every case): per case its status (ok, error, interrupted,
skipped) and figures, and the ratios ours / torch. The columns are explained
under the tables.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.dirname(HERE))

from accelerator_cases import CASES, ROOT, run_cases  # noqa: E402  (standard library only at import)

# ours: the torch cases it is compared with (ratio ours / theirs, < 1: ours faster).
PAIRS = {"sd_step_b8": ("torch_step_b8", "torch_compile_step_b8"), "sampler_b1": ("torch_sampler_b1",),
         "sampler_b8": ("torch_sampler_b8",)}


# ---------------------------------------------------------------- the run (parent process: no JAX, no torch)

class Stop(Exception):
    """SIGTERM or SIGINT: stop the running case, print and write what there is (`results`: the running group's)."""

    results: dict = {}


def run_group(names: list[str], args, timeout_s: float, workdir: str) -> dict:
    """Cases in one fresh process, its output echoed; killed (with its children) after `timeout_s`.

    Returns {case: result} for every name: a case without a result is the one
    that was running when the process died or was stopped; those after it are skipped.
    """
    cmd = [sys.executable, HERE, "--case", ",".join(names), "--result_dir", workdir, "--remat", args.remat,
           "--cache_dir", args.cache_dir, "--torch_device", args.torch_device]
    cmd += (["--smoke"] if args.smoke else []) + (["--steps", str(args.steps)] if args.steps else [])
    cmd += ["--profile", args.profile] if args.profile else []
    env = dict(os.environ)
    if CASES[names[0]][0].startswith("torch"):
        env["JAX_PLATFORMS"] = "cpu"  # JAX only describes the model there; the chip is torch's
    else:
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")  # the whole chip is this case's
    start = time.monotonic()
    tail = collections.deque(maxlen=12)
    proc = reader = stopped = signalled = None
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                env=env, cwd=ROOT, start_new_session=True)
        reader = threading.Thread(target=echo, args=(proc.stdout, tail), daemon=True)
        reader.start()
        proc.wait(timeout=None if math.isinf(timeout_s) else max(timeout_s, 0.1))
    except subprocess.TimeoutExpired:
        stopped = "stopped at the budget"
    except Stop as e:
        stopped, signalled = f"stopped by {e}", e
    finally:
        if proc is not None and proc.poll() is None:
            kill_group(proc)
    if reader is not None:
        reader.join(timeout=2)
    wall_s = time.monotonic() - start
    results, running = {}, None
    for name in names:
        path = os.path.join(workdir, name + ".json")
        if os.path.isfile(path):
            with open(path) as f:
                results[name] = json.load(f)
        elif running is None:
            running = name
            last = " | ".join(line for line in tail if line.strip())[-600:]
            results[name] = (dict(status="interrupted", error=f"{stopped} after {wall_s:.0f} s") if stopped else
                             dict(status="error", error=f"its process exited with {proc and proc.returncode}: {last}"))
        else:
            results[name] = dict(status="skipped", error=f"not reached: {running} ended its process")
    results[names[0]]["process_s"] = wall_s  # the whole process, start-up included
    if signalled:
        signalled.results = results
        raise signalled
    return results


def echo(stream, tail) -> None:
    """A case process's output, indented, as it comes; its last lines kept for the error of a crash."""
    for line in stream:
        tail.append(line.rstrip())
        print("    " + line.rstrip(), flush=True)


def kill_group(proc) -> None:
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 3)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def add_comparisons(results: dict) -> dict:
    """ours / torch for each pair that both ran, and torch's TFLOP/s and MFU on our FLOP count."""
    ratios = {}
    for ours, theirs_all in PAIRS.items():
        a = results.get(ours, {})
        for theirs in theirs_all:
            t = results.get(theirs, {})
            if a.get("status") != "ok" or t.get("status") != "ok":
                continue
            key = "step_s" if "step_s" in a else "s_per_frame"
            ratios[f"{ours}/{theirs}"] = t["ours_over_torch"] = a[key] / t[key]
            if a.get("flops"):
                t["tflops_s"] = a["flops"] / t["step_s"] / 1e12
                t["mfu"] = t["tflops_s"] / a["peak_tflops"] if a.get("peak_tflops") else None
    return ratios


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (out.stdout.strip() + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def brief(r: dict) -> str:
    """A case's result in one line."""
    if r["status"] != "ok":
        return f"{r['status']}: {r.get('error', '')}"
    parts = [f"{r['step_s']:.4f} s/step" if "step_s" in r else f"{r['s_per_frame']:.4f} s/frame"]
    parts += [f"compile {r['compile_s']:.1f} s"] if r.get("compile_s") else []
    parts += [f"{r['tflops_s']:.1f} TFLOP/s"] if r.get("tflops_s") else []
    parts += [f"MFU {r['mfu']:.1%}"] if r.get("mfu") else []
    parts += [f"peak {r['peak_mem_gib']:.1f} GiB"] if r.get("peak_mem_gib") else []
    return "ok: " + ", ".join(parts)


def report(summary: dict) -> str:
    """The tables, what was not measured (and the command that runs it), and what the columns mean."""
    f = lambda x, spec: "-" if x is None else format(x, spec)
    cases, meta = summary["cases"], summary["meta"]
    device = meta.get("device") or {}
    ok = lambda key: [(name, r) for name, r in cases.items() if r["status"] == "ok" and key in r]
    lines = [f"ART·V on {device.get('device_kind', '?')} ({device.get('platform', '?')}, jax {device.get('jax', '?')}"
             f", bf16 peak {f(device.get('peak_tflops'), '.0f')} TFLOP/s), commit {meta['commit']}, "
             f"{meta['wall_s']:.0f} s" + ("; SMOKE RUN: tiny sizes on a CPU, no figure here means anything"
                                          if meta["smoke"] else ""), "",
             f"{'training step':22s} {'batch':>5s} {'mode':>10s} {'compile s':>9s} {'step s':>8s} {'steps/s':>7s} "
             f"{'ex/s':>7s} {'TFLOP/step':>10s} {'TFLOP/s':>7s} {'MFU':>6s} {'peak GiB':>8s} {'ours/torch':>10s}"]
    for name, r in ok("step_s"):
        lines.append(f"{name:22s} {r['batch']:5d} {r['mode'][:10]:>10s} {f(r.get('compile_s'), '.1f'):>9s} "
                     f"{r['step_s']:8.4f} {f(r.get('pipelined_step_s') and 1 / r['pipelined_step_s'], '.2f'):>7s} "
                     f"{r['examples_s']:7.1f} {f(r.get('flops') and r['flops'] / 1e12, '.3f'):>10s} "
                     f"{f(r.get('tflops_s'), '.1f'):>7s} {f(r.get('mfu'), '.1%'):>6s} "
                     f"{f(r.get('peak_mem_gib'), '.1f'):>8s} {f(r.get('ours_over_torch'), '.2f'):>10s}")
    lines += ["", f"{'sampler':22s} {'batch':>5s} {'frames':>6s} {'warm-up s':>9s} {'s/frame':>8s} {'peak GiB':>8s} "
                  f"{'ours/torch':>10s}"]
    for name, r in ok("s_per_frame"):
        lines.append(f"{name:22s} {r['batch']:5d} {r['generated_frames']:6d} {r['warmup_s']:9.1f} "
                     f"{r['s_per_frame']:8.4f} {f(r.get('peak_mem_gib'), '.2f'):>8s} "
                     f"{f(r.get('ours_over_torch'), '.2f'):>10s}")
    missing = [name for name, r in cases.items() if r["status"] != "ok"]
    lines += ["", "not measured:"] + [f"  {n}: {cases[n]['status']}: {cases[n].get('error', '')}" for n in missing]
    if not missing:
        lines.append("  none")
    rest = [n for n in missing if cases[n]["status"] in ("skipped", "interrupted")]
    if rest:
        lines.append(f"  the rest: python benchmarks/accelerator.py --cases {','.join(rest)} --budget_s ...")
    notes = [f"  {name}: {r['note']}" for name, r in cases.items() if r.get("note")]
    lines += (["notes:"] + notes if notes else []) + [
        "",
        "mode: sd_step bf16 compute over fp32 weights (remat: rematerialised UNet blocks); torch bf16 autocast, eager",
        "  or with the UNet torch.compile'd. compile s: XLA's compile of the step (lowering excluded; torch.compile:",
        "  the first step). step s: median of the timed steps, each waited for; steps/s: steps issued back to back,",
        "  as the train loop runs them. TFLOP/step: XLA's cost analysis of the compiled step (with remat: of the step",
        "  lowered without it, where the backend counts lowered programs; see the notes); torch rows: our count, and",
        "  torch's own count is torch_counted_flops in the JSON. MFU: TFLOP/s over the chip's dense bf16 peak. peak",
        "  GiB: the case process's peak device memory (JAX memory_stats, torch max_memory_allocated; - on a CPU).",
        "  s/frame: median video time per generated frame; 25 DDIM steps with guidance (2 UNet passes per step),",
        "  bf16, latents only. ours/torch: < 1 means ours is faster. The JSON has every field of every case."]
    return "\n".join(lines)


def orchestrate(args, names: list[str]) -> int:
    start = time.monotonic()
    margin = min(10.0, 1.0 + 0.05 * args.budget_s) if args.budget_s else 0.0
    deadline = start + args.budget_s - margin if args.budget_s else math.inf
    summary = dict(meta=dict(started=time.strftime("%Y-%m-%d %H:%M:%S"), commit=git_commit(), argv=sys.argv[1:],
                             smoke=args.smoke, budget_s=args.budget_s, cases=names, device=None, wall_s=0.0),
                   cases={}, ratios={})
    cases = {}  # by name, as they end

    def write():
        summary["cases"] = {n: cases[n] for n in names if n in cases}  # in the order asked for
        summary["meta"]["wall_s"] = time.monotonic() - start
        summary["meta"]["tensorflow_imported"] = any(m.split(".")[0] == "tensorflow" for m in sys.modules)
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out + ".tmp", "w") as f:
                json.dump(summary, f, indent=1)
            os.replace(args.out + ".tmp", args.out)

    def on_signal(signum, frame):
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        with tempfile.TemporaryDirectory(prefix="artv_accelerator_") as workdir:
            # One process per case: its own peak memory, its own crash; the smoke run groups cases by framework.
            groups = [[n] for n in names]
            if args.smoke:
                groups = [[n for n in names if CASES[n][0].startswith(t)] for t in ("s", "t")]  # JAX, torch
            no_torch = None  # why the torch cases cannot run here, once one has found out
            for group in filter(None, groups):
                left = deadline - time.monotonic()
                if no_torch and CASES[group[0]][0].startswith("torch"):
                    cases.update({name: dict(status="skipped", error=no_torch) for name in group})
                    continue
                if left < 2 * margin:
                    for name in group:
                        cases[name] = dict(status="skipped", error=f"budget: {max(left, 0):.0f} s of "
                                                                   f"{args.budget_s:.0f} left")
                    continue
                print(f"[{len(cases) + 1}/{len(names)}] {','.join(group)} ({time.monotonic() - start:.0f} s)",
                      flush=True)
                cases.update(run_group(group, args, left, workdir))
                for name in group:
                    r = cases[name]
                    if summary["meta"]["device"] is None and r["status"] == "ok" and "platform" in r:
                        summary["meta"]["device"] = {k: r[k] for k in ("device_kind", "platform", "devices", "jax",
                                                                       "peak_tflops", "bytes_limit_gib")}
                    print(f"  {name}: {brief(r)}", flush=True)
                    if any(why in r.get("error", "") for why in ("torch not installed", "torch sees no CUDA")):
                        no_torch = r["error"]
                write()
    except Stop as e:
        summary["meta"]["stopped"] = f"{e} after {time.monotonic() - start:.0f} s"
        cases.update(e.results)
        for name in names:
            cases.setdefault(name, dict(status="skipped", error=f"{e} before it started"))
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # what is left takes a moment: let it finish
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    summary["ratios"] = add_comparisons(cases)
    summary["meta"]["complete"] = all(r["status"] == "ok" for r in cases.values())
    write()
    print("\n" + report(summary))
    print(json.dumps(summary))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="cases, in the default order: " + ", ".join(CASES))
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names, run in this order")
    parser.add_argument("--budget_s", type=float, default=None,
                        help="stop cleanly before this many seconds (the running case is stopped, the rest skipped)")
    parser.add_argument("--out", default=None, help="the JSON summary's file, rewritten after every case")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, few steps, CPU: checks every case runs")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 12; smoke 2)")
    parser.add_argument("--remat", choices=("auto", "on", "off"), default="auto",
                        help="SD step: auto = remat only when the compiled step would not fit in the chip's memory")
    parser.add_argument("--profile", default=None, help="write a jax.profiler trace of 3 SD steps to DIR/<case>")
    parser.add_argument("--cache_dir", default="~/.cache/artv_jax/xla", help="JAX's compilation cache ('' off)")
    parser.add_argument("--torch_device", default="auto", help="auto: cuda (smoke: cpu when there is no cuda)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run cases in this process
    parser.add_argument("--result_dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        if any(n not in CASES for n in args.case.split(",")) or not args.result_dir:
            parser.error(f"--case takes names from {list(CASES)}, with --result_dir")
        run_cases(args)
        return 0
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown or not names or len(set(names)) != len(names):
        parser.error(f"--cases takes distinct names from {list(CASES)}, got {args.cases!r}")
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error("--budget_s must be positive")
    # The cases run from the repository root: paths as the caller meant them.
    args.cache_dir = os.path.abspath(os.path.expanduser(args.cache_dir)) if args.cache_dir else ""
    args.profile = os.path.abspath(args.profile) if args.profile else None
    return orchestrate(args, names)


if __name__ == "__main__":
    sys.exit(main())
