"""Training-step time of ART·V, ours (JAX/XLA) against the equivalent PyTorch/diffusers step, in one run.

    python benchmarks/train_step.py [--models tiny,sd] [--repeats 3] [--batch_tiny 32] [--batch_sd 2]
                                    [--size_sd 256]

Two models:

- tiny: the shapes default (`configs/shapes.py`): pixel space (32x32 frames as
  16x16x12 patches), UNet + adapter + the 2-layer text encoder all trained (the
  text encoder only while the config's `train.trainable` names "text", as it does).
- sd: a small SD-like model (`configs/webvid.py` on a random diffusers SD
  directory written to a temporary folder): the 35M-parameter UNet of
  `benchmarks/unet_vs_diffusers.py` (SMALL_SD), an 8x VAE (32-64-64-64
  channels) and a 4-layer CLIP text encoder (hidden 256), both frozen;
  UNet + adapter trained; float32, no remat.

Both sides do the same work per step: encode target, reference and anchor
frames (VAE posterior mean under no-grad, or pixel-unshuffle), encode the
caption and the empty prompt, drop text/references, noise the target and
noise-augment the references, adapter -> UNet (adapter maps as
`down_intrablock_additional_residuals`, mask channel), the masked x0-space
blend and its MSE, backward, global-norm clipping, AdamW, EMA (and skip the
update when the loss or gradient norm is not finite). The torch side is eager
PyTorch with random weights (timing only), `torch.set_num_threads(cpu_count)`.

Prints s/step (best of --repeats after one warm-up step; compilation
excluded and reported separately), examples/s, the ratio ours / torch (< 1:
we are faster), the FLOPs of one step from XLA's cost analysis and the
achieved GFLOP/s of both sides on that count. `torch GFLOP` is torch's own
FlopCounterMode count of one step (matmuls, convolutions, attention only) as a
cross-check. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from artv_jax import components as components_lib
from artv_jax import export
from artv_jax import train_step as ts
from artv_jax.diffusion.schedule import V_LOSS_WEIGHT_CAP
from configs import shapes as shapes_config
from configs import webvid as webvid_config
from unet_vs_diffusers import SMALL_SD, best_time, torch_matmul_like_jax

# The small SD-like model's VAE (8x down-sampling) and text encoder.
SMALL_VAE = dict(block_out_channels=(32, 64, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                 norm_num_groups=32)
SMALL_TEXT = dict(vocab_size=49408, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                  num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu")


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def xla_flops(cost) -> float:
    """FLOPs from `compiled.cost_analysis()`, which is a dict or (older JAX) a list of dicts; nan if absent."""
    entries = cost if isinstance(cost, (list, tuple)) else [cost]
    flops = sum(float(e.get("flops", 0.0)) for e in entries if e)
    return flops if flops > 0 else math.nan


# ---------------------------------------------------------------- the models

def tiny_model():
    """configs/shapes.py as is: (config, components, params, torch modules)."""
    config = shapes_config.get_config()
    comps, _ = components_lib.build(config, jnp.float32)
    params = jax.jit(comps.init)(jax.random.PRNGKey(config.seed))

    torch.manual_seed(0)
    m = config.model
    # The same architecture as ours, written as the export writes it (text pooling and scale-shift included).
    unet = diffusers.UNet2DConditionModel.from_config(
        {**export.unet_config_dict(comps.model.unet_config), "sample_size": comps.latent_size})
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=comps.tokenize.vocab_size, hidden_size=m.text.hidden_size,
        intermediate_size=4 * m.text.hidden_size, num_hidden_layers=m.text.num_layers,
        num_attention_heads=m.text.num_heads, max_position_embeddings=m.text.max_length, hidden_act="quick_gelu",
        bos_token_id=0, eos_token_id=comps.tokenize.eos_token_id, pad_token_id=comps.tokenize.eos_token_id))
    patch = comps.autoencoder.patch
    return config, comps, params, dict(unet=unet, text=text, encode=lambda x: F.pixel_unshuffle(x, patch),
                                       train_text="text" in tuple(config.train.trainable))


def write_tokenizer(path: str) -> None:
    """A minimal CLIP BPE tokenizer directory (letters, no merges): enough to tokenize the empty prompt.

    The benchmark feeds random token ids; only the prompt length (77) and the
    begin/end ids matter.
    """
    os.makedirs(path, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
                   "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                   "do_lower_case": True}, f)


def sd_model(size: int):
    """configs/webvid.py on a random small SD directory: (config, components, params, torch modules)."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**SMALL_SD)
    vae = diffusers.AutoencoderKL(**SMALL_VAE, sample_size=size).eval()
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**SMALL_TEXT)).eval()
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    config = webvid_config.get_config("256")
    config.data.size = size
    config.train.compute_dtype = "float32"
    config.train.remat = False
    config.train.trainable = ("artv",)
    config.mesh.shape = (-1, 1)
    with tempfile.TemporaryDirectory() as root:
        unet.save_pretrained(os.path.join(root, "unet"))
        vae.save_pretrained(os.path.join(root, "vae"))
        text.save_pretrained(os.path.join(root, "text_encoder"))
        scheduler.save_pretrained(os.path.join(root, "scheduler"))
        write_tokenizer(os.path.join(root, "tokenizer"))
        with open(os.path.join(root, "model_index.json"), "w") as f:
            json.dump({"_class_name": "StableDiffusionPipeline"}, f)
        config.model.pretrained = root
        comps, params = components_lib.build(config, jnp.float32)

    # The torch UNet: the same architecture with the mask channel (random weights; timing only).
    wide_unet = diffusers.UNet2DConditionModel(**{**SMALL_SD, "out_channels": SMALL_SD.get("in_channels", 4) + 1})
    for p in list(vae.parameters()) + list(text.parameters()):
        p.requires_grad_(False)
    scale, shift = vae.config.scaling_factor, vae.config.shift_factor or 0.0

    def encode(x):
        return (vae.encode(x).latent_dist.mean - shift) * scale

    return config, comps, params, dict(unet=wide_unet, text=text, encode=encode, train_text=False, to_device=[vae])


def random_batch(config, comps, batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    s, r = comps.frame_size, config.model.artv.num_ref_frames
    length = len(comps.tokenize(""))
    vocab = comps.text_encoder.config.vocab_size
    return {
        "target": rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8),
        "refs": rng.integers(0, 256, (batch, r, s, s, 3), dtype=np.uint8),
        "anchor": rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8),
        "tokens": rng.integers(0, vocab, (batch, length)).astype(np.int32),
        # the tuple pipeline's position keys (objective.start_t_logit_normal reads them): a quarter first steps
        "frame_index": np.where(np.arange(batch) % 4 == 0, 1, rng.integers(2, 16, batch)).astype(np.int32),
        "stride": np.ones(batch, np.int32),
    }


# ---------------------------------------------------------------- ours

def time_ours(config, comps, params, batch_np, repeats: int, label: str) -> dict:
    tx = ts.make_optimizer(config)
    trainable, frozen = ts.split_params(params, tuple(config.train.trainable))
    state = jax.jit(lambda p: ts.TrainState.create(p, tx))(trainable)
    step = jax.jit(ts.make_train_step(comps, config, tx), donate_argnums=(0,))
    batch = jax.device_put(batch_np)
    key = jax.random.PRNGKey(1)

    print(f"compiling ours ({label}; XLA:CPU may take minutes)...", flush=True)
    start = time.perf_counter()
    compiled = step.lower(state, frozen, batch, key).compile()
    compile_s = time.perf_counter() - start
    print(f"  compiled in {compile_s:.1f} s", flush=True)
    flops = xla_flops(compiled.cost_analysis())

    box = {"state": state}

    def run():
        box["state"], metrics = compiled(box["state"], frozen, batch, key)
        jax.block_until_ready((box["state"], metrics))
        box["metrics"] = metrics

    print(f"timing ours ({label})...", flush=True)
    run()  # warm-up
    seconds = best_time(run, repeats)
    loss = float(box["metrics"]["loss"])
    return dict(seconds=seconds, compile_s=compile_s, flops=flops, loss=loss,
                params_trainable=count(trainable), params_total=count(params))


# ---------------------------------------------------------------- torch

def make_torch_step(config, comps, modules, batch_np, device: str = "cpu"):
    """The same training step in eager PyTorch (NCHW) on `device`: returns (step function, trainable parameter count)."""
    unet, text_encoder, encode, train_text = modules["unet"], modules["text"], modules["encode"], modules["train_text"]
    for module in [*modules.get("to_device", ()), unet, text_encoder]:
        module.to(device)
    m, obj, t_cfg = config.model, config.objective, config.train
    r = m.artv.num_ref_frames
    latent_channels = comps.autoencoder.channels
    adapter = diffusers.T2IAdapter(
        in_channels=latent_channels * (r + 1) + 1, channels=list(unet.config.block_out_channels),
        num_res_blocks=m.artv.adapter_num_res_blocks, downscale_factor=m.artv.adapter_downscale_factor,
        adapter_type="full_adapter").to(device)
    trainable = list(unet.parameters()) + list(adapter.parameters())
    if train_text:
        trainable += list(text_encoder.parameters())
    unet.train(), adapter.train(), text_encoder.train(train_text)
    opt = torch.optim.AdamW(trainable, lr=t_cfg.learning_rate, betas=(0.9, t_cfg.adam_b2),
                            weight_decay=t_cfg.weight_decay, foreach=True)
    ema = [p.detach().clone() for p in trainable]
    live = [p.detach() for p in trainable]
    decay = t_cfg.ema_decay

    schedule = comps.schedule
    num_t = schedule.num_train_timesteps
    alphas = torch.from_numpy(np.array(schedule.alphas_cumprod, np.float32)).to(device)
    table = torch.cat([torch.ones(1, device=device), alphas])
    prediction = schedule.prediction_type
    if config.objective.loss_space == "v" and prediction == "epsilon":
        raise NotImplementedError("the PyTorch step weights only an x0 loss as v's (objective.loss_space)")
    v_loss_of_x0 = config.objective.loss_space == "v" and prediction == "sample"
    empty_tokens = torch.from_numpy(np.asarray(comps.tokenize(""), np.int64))[None].to(device)
    batch = {k: torch.from_numpy(v).to(device) for k, v in batch_np.items()}
    tokens = batch["tokens"].long()

    def frames(x):  # uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]
        return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def at_level(level):  # alpha_bar at noise levels s in [0, 1], interpolated like ours
        pos = (level * num_t).clamp(0.0, float(num_t))
        lo = pos.floor().clamp(max=num_t - 1).long()
        w = pos - lo
        return table[lo] * (1 - w) + table[lo + 1] * w

    def step():
        b = tokens.shape[0]
        with torch.no_grad():
            x0 = encode(frames(batch["target"]))
            refs_list = [encode(frames(batch["refs"][:, i])) for i in range(r)]
            anchor = encode(frames(batch["anchor"]))
        refs, x_ref = torch.cat(refs_list, dim=1), refs_list[-1]
        with torch.set_grad_enabled(train_text):
            text = text_encoder(tokens).last_hidden_state
            empty = text_encoder(empty_tokens).last_hidden_state
        drop_text = torch.rand(b, device=device) < obj.p_text
        drop_ref = torch.rand(b, device=device) < obj.p_ref
        text = torch.where(drop_text[:, None, None], empty, text)

        t = torch.randint(0, num_t, (b,), device=device)
        noise = torch.randn_like(x0)
        a = alphas[t].view(b, 1, 1, 1)
        sa, sb = a.sqrt(), (1 - a).sqrt()
        x_t = sa * x0 + sb * noise
        level = torch.rand(b, device=device) * obj.s_max
        a_s = at_level(level).view(b, 1, 1, 1)
        refs_in = a_s.sqrt() * refs + (1 - a_s).sqrt() * torch.randn_like(refs)
        plane = level.view(b, 1, 1, 1).expand(b, 1, *refs.shape[2:])
        features = adapter(torch.cat([refs_in, anchor, plane], dim=1))
        keep = (~drop_ref).float().view(b, 1, 1, 1)
        features = [f * keep for f in features]
        out = unet(x_t, t, text, down_intrablock_additional_residuals=features).sample
        pred, logits = out[:, :-1], out[:, -1:]
        mask = torch.where(drop_ref.view(b, 1, 1, 1), torch.ones_like(logits), torch.sigmoid(logits))
        if prediction == "v_prediction":
            ref_out, target = (sa * x_t - x_ref) / sb, sa * noise - sb * x0
        elif prediction == "sample":
            ref_out, target = x_ref, x0
        else:
            ref_out, target = (x_t - sa * x_ref) / sb, noise
        weight = torch.clamp(1.0 / sb ** 2, max=V_LOSS_WEIGHT_CAP) if v_loss_of_x0 else 1.0  # loss_space "v"
        loss = (weight * (mask * pred + (1 - mask) * ref_out - target) ** 2).mean()
        with torch.no_grad():  # the metrics ours computes
            _ = ((pred - target) ** 2).mean(), mask.mean()

        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(trainable, t_cfg.grad_clip)
        if torch.isfinite(loss) and torch.isfinite(norm):
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema, live, 1.0 - decay)
        return float(loss.detach())

    return step, sum(p.numel() for p in trainable)


def time_torch(step, repeats: int, label: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    print(f"timing torch ({label})...", flush=True)
    step()  # warm-up
    seconds = best_time(step, repeats)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return dict(seconds=seconds, counted_flops=float(counter.get_total_flops()))


# ---------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,sd", help="comma-separated: tiny, sd")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_tiny", type=int, default=32)
    parser.add_argument("--batch_sd", type=int, default=2)
    parser.add_argument("--size_sd", type=int, default=256, help="frame size of the SD-like model (latents / 8)")
    parser.add_argument("--torch_device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the PyTorch step runs (default: cuda when available)")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in ("tiny", "sd")]
    if unknown or not names:
        parser.error(f"--models takes tiny and/or sd, got {args.models!r}")
    torch.set_num_threads(os.cpu_count())
    torch_matmul_like_jax(args.torch_device)

    rows = {}
    for name in names:
        print(f"building {name}...", flush=True)
        if name == "tiny":
            config, comps, params, modules = tiny_model()
            b = args.batch_tiny
        else:
            config, comps, params, modules = sd_model(args.size_sd)
            b = args.batch_sd
        batch_np = random_batch(config, comps, b)
        ours = time_ours(config, comps, params, batch_np, args.repeats, name)
        step, torch_params = make_torch_step(config, comps, modules, batch_np, args.torch_device)
        if torch_params != ours["params_trainable"]:
            print(f"  note: trainable parameters differ: ours {ours['params_trainable']}, torch {torch_params}")
        theirs = time_torch(step, args.repeats, name)
        rows[name] = dict(
            batch=b, frames=comps.frame_size, latents=f"{comps.latent_size}x{comps.latent_size}x"
                                                    f"{comps.autoencoder.channels}",
            params_trainable=ours["params_trainable"], params_total=ours["params_total"], params_torch=torch_params,
            ours_s=ours["seconds"], torch_s=theirs["seconds"], ratio=ours["seconds"] / theirs["seconds"],
            ours_examples_s=b / ours["seconds"], torch_examples_s=b / theirs["seconds"],
            compile_s=ours["compile_s"], xla_gflop=ours["flops"] / 1e9,
            ours_gflop_s=ours["flops"] / 1e9 / ours["seconds"], torch_gflop_s=ours["flops"] / 1e9 / theirs["seconds"],
            torch_counted_gflop=theirs["counted_flops"] / 1e9, loss=ours["loss"],
        )
        del params, comps, modules, step

    print(f"\nours on {jax.devices()[0].device_kind} (jax {jax.__version__}) / torch {torch.__version__} on "
          f"{args.torch_device}, "
          f"{os.cpu_count()} cores; best of {args.repeats} steps after a warm-up; float32")
    header = (f"{'model':5s} {'params M':>14s} {'batch':>5s} {'frames':>6s} {'latents':>9s} {'ours s':>8s} "
              f"{'torch s':>8s} {'ratio':>6s} {'ours ex/s':>9s} {'torch ex/s':>10s} {'compile s':>9s} "
              f"{'XLA GFLOP':>9s} {'ours GF/s':>9s} {'torch GF/s':>10s} {'torch GFLOP':>11s}")
    print(header)
    for name, x in rows.items():
        params = f"{x['params_trainable'] / 1e6:.2f}/{x['params_total'] / 1e6:.2f}"
        print(f"{name:5s} {params:>14s} {x['batch']:5d} {x['frames']:6d} {x['latents']:>9s} {x['ours_s']:8.3f} "
              f"{x['torch_s']:8.3f} {x['ratio']:6.2f} {x['ours_examples_s']:9.1f} {x['torch_examples_s']:10.1f} "
              f"{x['compile_s']:9.1f} {x['xla_gflop']:9.1f} {x['ours_gflop_s']:9.1f} {x['torch_gflop_s']:10.1f} "
              f"{x['torch_counted_gflop']:11.1f}")
    print("params M: trainable/total (ours); ratio: ours / torch (< 1: ours faster); GF/s: XLA's FLOPs per step "
          "/ s per step; torch GFLOP: torch FlopCounterMode's count of one step")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
