"""Seconds per frame of our sampler against the PyTorch sampler (`artv_jax.torch_sampler`) on one exported model.

    python benchmarks/sampler_vs_torch.py [--model shapes|tiny] [--frames 9] [--steps 25] [--batch 1]

The model is the shapes default (configs/shapes.py: 32x32 frames as 16x16x12
patches; `tiny` is the test model of tests/train_worker.py) at its random
initialisation, written by `artv_jax.export` and read back by both sides:
ours through `export.import_diffusers`, PyTorch through diffusers/transformers.
Both make an image-to-video (frame 0 given) with the same DDIM steps and
guidance on the same machine. Ours is `sampling.sample_video` (the frames in
one compiled `lax.scan` chunk), timed after a warm-up video (compilation
excluded); PyTorch runs eagerly. Prints seconds per generated frame, best of
--repeats, and the ratio ours / torch (< 1 means we are faster).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from artv_jax import components as components_lib
from artv_jax import export, generate
from artv_jax.diffusion import sampling
from artv_jax.torch_sampler import TorchSampler, torch_noise
from configs import shapes as shapes_config
from unet_vs_diffusers import best_time, torch_matmul_like_jax

PROMPT = "a red square moving right on a black background"


def model_config(name: str):
    c = shapes_config.get_config()
    if name == "tiny":  # tests/train_worker.py's model
        c.model.unet.update(block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, num_heads=2,
                            norm_num_groups=8)
        c.model.text.update(hidden_size=32, num_layers=1, num_heads=2, max_length=12)
    return c


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("shapes", "tiny"), default="shapes")
    parser.add_argument("--frames", type=int, default=9, help="video length; frame 0 is given")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps per frame")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch_device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the PyTorch sampler runs (default: cuda when available)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    torch_matmul_like_jax(args.torch_device)

    config = model_config(args.model)
    comps, _ = components_lib.build(config)
    with tempfile.TemporaryDirectory() as tmp:
        export.export(comps, jax.jit(comps.init)(jax.random.PRNGKey(0)), config, tmp)
        comps, params = export.import_diffusers(tmp)
        tsampler = TorchSampler.from_pretrained(tmp, device=args.torch_device)
    n_params = sum(p.numel() for p in tsampler.unet.parameters()) + sum(p.numel() for p in tsampler.adapter.parameters())

    settings = dict(num_steps=args.steps, eta=0.0, text_guidance=config.sample.text_guidance, ref_guidance=1.0,
                    ref_level=config.sample.ref_level)
    b, n, size, c = args.batch, args.frames, comps.latent_size, comps.autoencoder.channels
    generated = n - 1
    rng = np.random.default_rng(0)
    first = rng.standard_normal((1, b, size, size, c)).astype(np.float32)

    # Ours: one chunk holds every generated frame, so the timed video is one compiled call.
    sampler = sampling.Sampler(comps.model, comps.schedule, sampling.SamplerConfig(chunk_size=generated, **settings))
    emb = generate.embed(comps, params, [PROMPT] * b)
    texts = jnp.broadcast_to(emb[None], (n, *emb.shape))
    uncond = jnp.broadcast_to(generate.embed(comps, params, [""]), emb.shape)
    ours = lambda: sampling.sample_video(sampler, params["artv"], jax.random.PRNGKey(0), texts, uncond,
                                         first_frames=first, progress=False)
    ours()  # compile

    # PyTorch: the same model, inputs and settings.
    emb_t = tsampler.encode_prompts([PROMPT] * b)
    texts_t = emb_t[None].expand(n, -1, -1, -1)
    uncond_t = tsampler.encode_prompts([""]).expand(b, -1, -1)
    first_t = torch.from_numpy(first.transpose(0, 1, 4, 2, 3).copy())
    generator = torch.Generator().manual_seed(0)
    def theirs():
        noise = torch_noise(generator, (b, c, size, size), comps.model.config.num_ref_frames, args.steps)
        out = tsampler.sample_latents(texts_t, uncond_t, first_frames=first_t, noise=noise, **settings)
        if args.torch_device.startswith("cuda"):
            torch.cuda.synchronize()  # CUDA kernels run asynchronously
        return out

    theirs()  # warm-up

    ours_s = best_time(ours, args.repeats) / generated
    torch_s = best_time(theirs, args.repeats) / generated
    print(f"ART·V {args.model} ({n_params / 1e6:.2f}M UNet+adapter params), batch {b}, latents {size}x{size}x{c}, "
          f"{args.steps} DDIM steps, guidance {settings['text_guidance']} (2 UNet passes per step), "
          f"{generated} generated frames; ours on {jax.devices()[0].device_kind} / torch {torch.__version__} on "
          f"{args.torch_device}, "
          f"{os.cpu_count()} cores; best of {args.repeats}")
    print(f"{'':10s} {'ours (s/frame)':>15s} {'torch (s/frame)':>16s} {'ratio':>7s}")
    print(f"{'sampling':10s} {ours_s:15.4f} {torch_s:16.4f} {ours_s / torch_s:7.2f}")
    print(json.dumps({"model": args.model, "batch": b, "steps": args.steps, "frames": generated,
                      "ours_s_per_frame": ours_s, "torch_s_per_frame": torch_s, "ratio": ours_s / torch_s}))


if __name__ == "__main__":
    main()
