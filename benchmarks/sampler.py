"""Seconds per frame and peak memory of the autoregressive sampler: lax.scan chunks against a Python loop.

    python benchmarks/sampler.py [--frames 16 64] [--models shapes sd_small]

Each (model, mode, frames) runs in its own process, so its peak resident
memory (on CPU the device memory is host memory) is its own: `peak` over the
whole process (compilation included), `while sampling` the peak of the timed
run alone (VmHWM reset after warm-up); on an accelerator also the device's
own peak (`memory_stats()["peak_bytes_in_use"]`, compilation included).
`scan` is `sampling.sample_video` (chunks of 8 frames, one compiled program);
`loop` calls a jitted per-frame step from a Python loop. Seconds per frame
exclude compilation (a warm-up video of one chunk runs first).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _shapes_model() -> dict:
    """The shapes default's UNet and sampler, read from configs/shapes.py (so the benchmark follows the config)."""
    from configs import shapes

    c = shapes.get_config()
    u, patch = c.model.unet, c.model.patch
    return dict(channels=tuple(u.block_out_channels), down=tuple(u.down_block_types), up=tuple(u.up_block_types),
                heads=u.num_heads, groups=u.norm_num_groups, text_dim=c.model.text.hidden_size,
                in_channels=3 * patch * patch, size=c.data.size // patch, steps=c.sample.num_steps)


MODELS = {
    # The shapes default (configs/shapes.py): 32x32 frames as 16x16x12 patches, its DDIM steps.
    "shapes": _shapes_model(),
    # A small SD-like latent model: 4 levels, 16x16 latents (128px images), 10 DDIM steps.
    "sd_small": dict(channels=(64, 128, 256, 256), down=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, heads=8, groups=32, text_dim=256,
                     in_channels=4, size=16, steps=10),
}


def child(model_name: str, mode: str, frames: int) -> dict:
    import jax
    import jax.numpy as jnp

    from artv_jax.diffusion import sampling
    from artv_jax.diffusion.schedule import NoiseSchedule
    from artv_jax.models import artv
    from artv_jax.models.unet import UNetConfig

    m = MODELS[model_name]
    n = len(m["channels"])
    unet = UNetConfig(in_channels=m["in_channels"], out_channels=m["in_channels"] + 1, block_out_channels=m["channels"],
                      down_block_types=m["down"], up_block_types=m["up"], layers_per_block=(1,) * n,
                      transformer_layers_per_block=(1,) * n, num_attention_heads=(m["heads"],) * n,
                      cross_attention_dim=(m["text_dim"],) * n, norm_num_groups=m["groups"])
    model = artv.ArtV(unet, artv.ArtVConfig())
    params = artv.init_params(model, jax.random.PRNGKey(0), m["size"], m["size"])
    schedule = NoiseSchedule.from_config(dict(beta_schedule="linear", clip_sample=False))
    sampler = sampling.Sampler(model, schedule, sampling.SamplerConfig(num_steps=m["steps"], chunk_size=8))
    key = jax.random.PRNGKey(1)
    text = jax.random.normal(key, (1, 8, m["text_dim"]))
    uncond = jnp.zeros_like(text)
    shape = (1, m["size"], m["size"], m["in_channels"])
    first = jax.random.normal(key, (1, *shape))

    if mode == "scan":
        run = lambda n: sampling.sample_video(sampler, params, key, jnp.broadcast_to(text, (n, *text.shape)), uncond,
                                              first_frames=first, progress=False)
    else:
        step = jax.jit(lambda p, s, c: sampler.frame_step(p, key, uncond, None, s, c))

        def run(n):
            state = sampling.initial_state(sampler, first)
            out = [first[0]]
            for _ in range(n - 1):
                state, frame = step(params, state, text)
                out.append(jax.device_get(frame))
            return out

    jax.block_until_ready(run(9))  # compile (one chunk) outside the timing
    reset = _reset_peak_rss()
    start = time.perf_counter()
    jax.block_until_ready(run(frames))
    seconds = time.perf_counter() - start
    stats = jax.local_devices()[0].memory_stats() or {}  # accelerators: device memory; CPU: None
    return {"model": model_name, "mode": mode, "frames": frames, "s_per_frame": seconds / (frames - 1),
            "device": jax.local_devices()[0].device_kind,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "sampling_peak_rss_mib": _peak_rss_mib() if reset else float("nan"),
            "device_peak_mib": stats.get("peak_bytes_in_use", float("nan")) / 2**20}


def _reset_peak_rss() -> bool:
    """Linux: reset VmHWM so that the peak measured next excludes compilation."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
        return
    rows = []
    for model in args.models:
        for mode in ("scan", "loop"):
            for frames in args.frames:
                out = subprocess.run([sys.executable, __file__, "--child", model, mode, str(frames)],
                                     capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{model} {mode} {frames} failed:\n{out.stderr[-3000:]}")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"{r['model']:9s} {r['mode']:5s} {r['frames']:4d} frames  {r['s_per_frame']:.3f} s/frame  "
                      f"peak {r['peak_rss_mib']:.0f} MiB (while sampling {r['sampling_peak_rss_mib']:.0f} MiB)"
                      + ("" if math.isnan(r["device_peak_mib"]) else f", device peak {r['device_peak_mib']:.1f} MiB"),
                      flush=True)
    for model in args.models:
        for mode in ("scan", "loop"):
            for key in ("peak_rss_mib", "sampling_peak_rss_mib", "device_peak_mib"):
                peaks = {r["frames"]: r[key] for r in rows if r["model"] == model and r["mode"] == mode}
                if len(peaks) > 1 and not any(math.isnan(v) for v in peaks.values()):
                    lo, hi = min(peaks), max(peaks)
                    print(f"{model} {mode}: {key} at {hi} frames / at {lo} frames = {peaks[hi] / peaks[lo]:.3f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
