"""Forward and forward+backward time of our Flax UNet against diffusers' PyTorch UNet.

Same small SD-like config, same weights, same batch, same machine, one run:

    python benchmarks/unet_vs_diffusers.py [--batch 2] [--size 32] [--repeats 5]

Prints seconds per call for each side and the ratio ours / diffusers (< 1 means
we are faster). JAX is timed after compilation (warm-up excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import diffusers

from artv_jax import pretrained

SMALL_SD = dict(
    block_out_channels=(64, 128, 256, 256),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=256,
    norm_num_groups=32,
    sample_size=32,
)


def torch_matmul_like_jax(device: str) -> None:
    """On a CUDA device, TF32 matmuls and convolutions for torch, as JAX uses by default on GPUs; no-op on CPU."""
    if device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=32, help="latent height and width")
    parser.add_argument("--tokens", type=int, default=77)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())

    torch.manual_seed(0)
    model = diffusers.UNet2DConditionModel(**SMALL_SD)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        unet, params = pretrained.load_unet(tmp)
    n_params = sum(p.numel() for p in model.parameters())

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.size, args.size, 4)).astype(np.float32)
    t = np.array([500] * args.batch)
    text = rng.standard_normal((args.batch, args.tokens, SMALL_SD["cross_attention_dim"])).astype(np.float32)
    x_t, t_t, text_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(t), torch.from_numpy(text)
    x_j, t_j, text_j = jnp.asarray(x), jnp.asarray(t), jnp.asarray(text)

    forward = jax.jit(lambda p, x, t, c: unet.apply({"params": p}, x, t, c))
    loss = lambda p, x, t, c: jnp.mean(unet.apply({"params": p}, x, t, c) ** 2)
    grad = jax.jit(jax.value_and_grad(loss))
    forward(params, x_j, t_j, text_j).block_until_ready()  # compile
    jax.block_until_ready(grad(params, x_j, t_j, text_j))

    def torch_forward():
        with torch.no_grad():
            model(x_t, t_t, text_t)

    def torch_backward():
        model.zero_grad(set_to_none=True)
        model(x_t, t_t, text_t).sample.pow(2).mean().backward()

    torch_forward(), torch_backward()  # warm-up
    rows = {
        "forward": (best_time(lambda: forward(params, x_j, t_j, text_j).block_until_ready(), args.repeats),
                    best_time(torch_forward, args.repeats)),
        "forward+backward": (best_time(lambda: jax.block_until_ready(grad(params, x_j, t_j, text_j)), args.repeats),
                             best_time(torch_backward, args.repeats)),
    }
    print(f"UNet {n_params / 1e6:.1f}M params, batch {args.batch}, latents {args.size}x{args.size}, "
          f"{args.tokens} tokens; {jax.devices()[0].platform} / torch {torch.__version__}, "
          f"{os.cpu_count()} cores; best of {args.repeats}")
    print(f"{'':18s} {'ours (s)':>10s} {'diffusers (s)':>14s} {'ratio':>7s}")
    for name, (ours, theirs) in rows.items():
        print(f"{name:18s} {ours:10.4f} {theirs:14.4f} {ours / theirs:7.2f}")
    print(json.dumps({k: {"ours_s": a, "diffusers_s": b, "ratio": a / b} for k, (a, b) in rows.items()}))


if __name__ == "__main__":
    main()
