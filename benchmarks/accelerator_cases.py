"""The measurements of benchmarks/accelerator.py: model sizes, the cases, and `run_cases`, which runs some here.

Only the standard library is imported at module level (JAX inside the JAX
cases, torch and diffusers inside the torch cases), so the runner reads
`CASES` without touching the chip and a JAX-only machine runs the JAX cases.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Dense bf16 peak per chip, TFLOP/s, by `device_kind` (lower-cased substring; first match wins).
PEAK_BF16_TFLOPS = (
    ("h100 pcie", 756.0), ("h100 nvl", 835.0), ("h100", 989.0), ("h200", 989.0),
    ("a100", 312.0), ("tpu v4", 275.0), ("tpu v5 lite", 197.0), ("tpu v5e", 197.0), ("tpu v5p", 459.0),
    ("tpu v5", 459.0), ("tpu v6 lite", 918.0), ("tpu v6e", 918.0),
)

# name: (kind, arguments); the default order is the priority order.
CASES = {
    "sd_step_b8": ("sd_step", dict(batch=8)),
    "torch_step_b8": ("torch_step", dict(batch=8, compiled=False)),
    "sampler_b1": ("sampler", dict(batch=1, frames=16)),
    "torch_sampler_b1": ("torch_sampler", dict(batch=1, frames=16)),
    "shapes_step": ("shapes_step", {}),
    "sd_step_b16": ("sd_step", dict(batch=16)),
    "sd_step_b32": ("sd_step", dict(batch=32)),
    "sampler_b8": ("sampler", dict(batch=8, frames=16)),
    "torch_sampler_b8": ("torch_sampler", dict(batch=8, frames=16)),
    "sampler_b1_f64": ("sampler", dict(batch=1, frames=64)),
    "torch_compile_step_b8": ("torch_step", dict(batch=8, compiled=True)),
}

SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      prediction_type="epsilon", set_alpha_to_one=False, steps_offset=1, clip_sample=False)
PROMPT = "a red car on a road"  # fits the smoke run's 8-token captions


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What a case builds: SD 1.5's shapes, or tiny ones for the CPU smoke run."""

    unet: dict  # UNetConfig fields (before the mask channel is added)
    vae: dict  # VAEConfig fields
    text: dict  # CLIPTextConfig fields
    frame: int  # frame height and width
    batch: dict  # a case's nominal batch -> the batch run
    frames: dict  # a case's nominal generated frames -> the frames run
    ddim_steps: int = 25
    chunk: int = 8  # frames per compiled sampler call
    steps: int = 12  # timed training steps (the median is reported)
    warmup: int = 2
    repeats: int = 3  # timed videos
    shapes_unet: dict | None = None  # overrides of configs/shapes.py's UNet and batch (None: as shipped)
    shapes_batch: int | None = None
    compile_backend: str = "inductor"  # torch.compile's backend
    force_remat: tuple = ()  # nominal batches of sd_step cases compiled with remat whatever --remat says


FULL = Sizes(
    unet=dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=(2,) * 4, num_attention_heads=(8,) * 4,
              cross_attention_dim=(768,) * 4, norm_num_groups=32, sample_size=64),
    vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, scaling_factor=0.18215,
             sample_size=512),
    text=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", eos_token_id=1),
    frame=256, batch={1: 1, 8: 8, 16: 16, 32: 32}, frames={16: 16, 64: 64})

SMOKE = Sizes(  # one UNet level and a VAE that does not downsample: the same code paths, compiled in seconds
    unet=dict(block_out_channels=(16,), down_block_types=("CrossAttnDownBlock2D",),
              up_block_types=("CrossAttnUpBlock2D",), layers_per_block=(1,), transformer_layers_per_block=(1,),
              num_attention_heads=(2,), cross_attention_dim=(32,), norm_num_groups=8),
    vae=dict(block_out_channels=(8,), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16),
    text=dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
              max_position_embeddings=8, hidden_act="quick_gelu", eos_token_id=1),
    frame=16, batch={1: 2, 8: 2, 16: 2, 32: 2}, frames={16: 2, 64: 4}, ddim_steps=2, chunk=2, steps=2, warmup=1,
    repeats=1, compile_backend="eager", shapes_batch=2, force_remat=(32,),  # the remat path runs too
    shapes_unet=dict(block_out_channels=(16,), down_block_types=("CrossAttnDownBlock2D",),
                     up_block_types=("CrossAttnUpBlock2D",), norm_num_groups=8))


def peak_tflops(device_kind: str) -> float | None:
    """The chip's dense bf16 peak in TFLOP/s, None for a chip not in `PEAK_BF16_TFLOPS`."""
    kind = device_kind.lower()
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in kind), None)


def xla_flops(cost) -> float | None:
    """FLOPs of a `cost_analysis()`: a dict, or (older JAX) a list of dicts; None where absent or zero."""
    entries = cost if isinstance(cost, (list, tuple)) else [cost]
    flops = sum(float(e.get("flops", 0.0)) for e in entries if e)
    return flops if flops > 0 else None


def gib(n) -> float | None:
    return None if n is None else n / 2 ** 30


# ---------------------------------------------------------------- building (inside a case's process)

def sd_config(sizes: Sizes, batch: int, remat: bool):
    """configs/webvid.py at the case's frame size and batch: bf16 compute, UNet + adapter trained."""
    sys.path.insert(0, ROOT)
    from artv_jax import config as config_lib
    from configs import webvid

    c = webvid.get_config("256")
    c.data.size = sizes.frame
    c.train.update(global_batch=batch, remat=remat, compute_dtype="bfloat16", trainable=("artv",))
    c.mesh.shape = (-1, 1)
    return config_lib.validate(c)


def sd_components(sizes: Sizes, config, dtype):
    """SD 1.5's architecture as `Components`, built from config dataclasses (no directory, no weights).

    The tokenizer is a word tokenizer of PROMPT's words padded to CLIP's 77
    positions: only the caption length matters for speed (training captions are random ids).
    """
    from artv_jax.components import Components, VAELatents
    from artv_jax.diffusion.schedule import NoiseSchedule
    from artv_jax.models import artv
    from artv_jax.models.clip_text import CLIPTextConfig, CLIPTextModel
    from artv_jax.models.unet import UNetConfig
    from artv_jax.models.vae import AutoencoderKL, VAEConfig
    from artv_jax.tokenizers import WordTokenizer

    unet = artv.widen_unet_config(UNetConfig(**sizes.unet))
    model = artv.ArtV(unet, artv.ArtVConfig(**dict(config.model.artv)), dtype, remat=config.train.remat)
    return Components(model=model, schedule=NoiseSchedule.from_config(SD15_SCHEDULER),
                      text_encoder=CLIPTextModel(CLIPTextConfig(**sizes.text), dtype=dtype),
                      tokenize=WordTokenizer(tuple(dict.fromkeys(PROMPT.split())),
                                             max_length=sizes.text["max_position_embeddings"]),
                      autoencoder=VAELatents(AutoencoderKL(VAEConfig(**sizes.vae), dtype=dtype)),
                      frame_size=sizes.frame)


def sd_init(comps):
    """key -> {"artv", "text", "vae"}: the flax init of SD's modules (traced for shapes only, see `random_init`)."""
    import jax
    import jax.numpy as jnp

    from artv_jax.models import artv

    def init(key):
        k1, k2, k3 = jax.random.split(key, 3)
        size, f = comps.latent_size, comps.autoencoder.factor
        tokens = jnp.zeros((1, comps.text_encoder.config.max_position_embeddings), jnp.int32)
        return {"artv": artv.init_params(comps.model, k1, size, size, text_len=4),
                "text": comps.text_encoder.init(k2, tokens)["params"],
                "vae": comps.autoencoder.vae.init(k3, jnp.zeros((1, 2 * f, 2 * f, 3)))["params"]}

    return init


def random_init(init, dtype=None, group: int = 2 ** 26):
    """A jittable key -> random parameters shaped as `init(key)` makes them (in `dtype`, default theirs).

    Kernels and embeddings N(0, 1/fan_in), norm scales 1, biases 0, drawn a
    few normal vectors at a time (`group` values each, so the draw's temporary
    stays small next to the parameters). Speed does not depend on the values,
    and a flax init also compiles every module's forward pass (3.5 times this
    draw's compile time for the smoke run's model), in every case's process.
    """
    import jax
    import jax.numpy as jnp

    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    batches, current = [], []  # indices of the matrices drawn together
    for i, (_, leaf) in enumerate(leaves):
        if len(leaf.shape) > 1:
            if current and sum(math.prod(leaves[j][1].shape) for j in current) + math.prod(leaf.shape) > group:
                batches.append(current)
                current = []
            current.append(i)
    batches += [current] if current else []

    def fill(key):
        out = [None if len(leaf.shape) > 1 else  # vectors: norm scales 1, biases 0
               jnp.full(leaf.shape, 1.0 if "scale" in jax.tree_util.keystr(path[-1:]) else 0.0, dtype or leaf.dtype)
               for path, leaf in leaves]
        for n, batch in enumerate(batches):
            sizes = [math.prod(leaves[i][1].shape) for i in batch]
            flat = jax.random.normal(jax.random.fold_in(key, n), (sum(sizes),), jnp.float32)
            for i, start, size in zip(batch, [sum(sizes[:k]) for k in range(len(sizes))], sizes):
                shape = leaves[i][1].shape
                value = flat[start:start + size].reshape(shape) / math.sqrt(math.prod(shape[:-1]))
                out[i] = value.astype(dtype or leaves[i][1].dtype)
        return treedef.unflatten(out)

    return fill


def random_batch(config, comps, batch: int, seed: int = 0) -> dict:
    """Random uint8 frames and caption ids in the shape of the input pipeline's batch."""
    import numpy as np

    rng = np.random.default_rng(seed)
    s, r = comps.frame_size, config.model.artv.num_ref_frames
    out = {"target": rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8),
           "refs": rng.integers(0, 256, (batch, r, s, s, 3), dtype=np.uint8),
           "anchor": rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8),
           "tokens": rng.integers(0, comps.text_encoder.config.vocab_size,
                                  (batch, len(comps.tokenize("")))).astype(np.int32)}
    if config.objective.start_t_logit_normal:  # the loss finds a clip's first steps by these
        out["frame_index"] = rng.integers(0, config.data.num_frames - 1, (batch,)).astype(np.int32)
        out["stride"] = np.ones((batch,), np.int32)
    return out


def count(tree) -> int:
    import jax

    return sum(int(x.size) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------- JAX cases

def device_info() -> dict:
    import jax

    d = jax.devices()[0]
    stats = d.memory_stats() or {}
    return dict(device_kind=d.device_kind, platform=d.platform, devices=jax.device_count(), jax=jax.__version__,
                peak_tflops=peak_tflops(d.device_kind), bytes_limit_gib=gib(stats.get("bytes_limit")))


def peak_memory_gib() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats()  # None on CPU
    return gib(stats.get("peak_bytes_in_use")) if stats else None


def lower_step(comps, config, init, batch_np) -> dict:
    """The jitted train step lowered against abstract state (nothing allocated): its model FLOPs and init."""
    import jax

    from artv_jax import train_step as ts

    tx = ts.make_optimizer(config)

    def init_state(key):
        trainable, frozen = ts.split_params(init(key), tuple(config.train.trainable))
        return ts.TrainState.create(trainable, tx), frozen

    key = jax.random.PRNGKey(0)
    state, frozen = jax.eval_shape(init_state, key)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch_np.items()}
    step = jax.jit(ts.make_train_step(comps, config, tx), donate_argnums=(0,))
    start = time.perf_counter()
    lowered = step.lower(state, frozen, batch, key)
    return dict(init_state=init_state, lowered=lowered, lower_s=time.perf_counter() - start,
                params_trainable=count(state.params), params_total=count(state.params) + count(frozen))


def compile_step(comps, config, init, batch_np) -> dict:
    """`lower_step` compiled: its FLOPs (XLA's cost analysis of the program that runs) and the bytes it needs on
    the chip (arguments, outputs and temporaries)."""
    built = lower_step(comps, config, init, batch_np)
    start = time.perf_counter()
    compiled = built["lowered"].compile()
    ma = compiled.memory_analysis()
    need = None if ma is None else (ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
                                    + ma.temp_size_in_bytes)
    return dict(built, compiled=compiled, compile_s=time.perf_counter() - start, need_bytes=need,
                flops=xla_flops(compiled.cost_analysis()))


def lowered_flops(lowered) -> float | None:
    """FLOPs of a lowered, not compiled, program; None where the backend cannot count them (GPU and TPU plugins:
    `Lowered.cost_analysis` is implemented only outside the PJRT C API)."""
    try:
        return xla_flops(lowered.cost_analysis())
    except NotImplementedError:
        return None


def time_step(built: dict, batch_np: dict, sizes: Sizes, steps: int, profile_dir: str | None) -> dict:
    """Median seconds of `steps` steps after warm-up, on state initialised on the chip."""
    import jax
    import numpy as np

    start = time.perf_counter()
    state, frozen = jax.jit(built["init_state"])(jax.random.PRNGKey(0))
    jax.block_until_ready((state, frozen))
    init_s = time.perf_counter() - start
    batch, key, compiled = jax.device_put(batch_np), jax.random.PRNGKey(1), built["compiled"]
    for _ in range(sizes.warmup):
        state, metrics = compiled(state, frozen, batch, key)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, frozen, batch, key)
        jax.block_until_ready(metrics)  # one executable: its outputs become ready together
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(steps):  # as the train loop runs: the host waits only at the end
        state, metrics = compiled(state, frozen, batch, key)
    jax.block_until_ready(metrics)
    pipelined_s = (time.perf_counter() - t0) / steps
    profile_error = None
    if profile_dir:
        try:
            with jax.profiler.trace(profile_dir):
                for _ in range(3):
                    state, metrics = compiled(state, frozen, batch, key)
                jax.block_until_ready(metrics)
        except Exception as e:  # a trace is a bonus: the timings above stand without it
            profile_error = short_error(e)
    metrics = jax.device_get(metrics)
    return dict(init_s=init_s, step_s=float(np.median(times)), step_s_min=min(times),
                step_s_mean=float(np.mean(times)), pipelined_step_s=pipelined_s, timed_steps=steps,
                loss=float(metrics["loss"]), nonfinite=int(metrics["nonfinite"]), profile_error=profile_error)


def step_result(built: dict, timing: dict, batch: int, flops: float | None) -> dict:
    """Speed, FLOPs, MFU and memory of a timed step. `flops`: the model's (without recomputation)."""
    info = device_info()
    tflops = None if flops is None else flops / timing["step_s"] / 1e12
    out = dict(info, batch=batch, lower_s=built["lower_s"], compile_s=built["compile_s"], **timing,
               examples_s=batch / timing["step_s"], flops=flops, flops_compiled=built["flops"],
               tflops_s=tflops, mfu=None if tflops is None or info["peak_tflops"] is None else tflops / info[
                   "peak_tflops"], compiled_mem_gib=gib(built["need_bytes"]), peak_mem_gib=peak_memory_gib(),
               params_trainable=built["params_trainable"], params_total=built["params_total"])
    notes = []
    if flops is None:
        notes.append("XLA counted no FLOPs, so no TFLOP/s or MFU")
    elif info["peak_tflops"] is None:
        notes.append(f"no bf16 peak known for {info['device_kind']!r}, so no MFU (PEAK_BF16_TFLOPS)")
    if timing["nonfinite"]:
        notes.append("non-finite loss: the updates were skipped, so the step time lacks the optimizer update")
    if notes:
        out["note"] = "; ".join(notes)
    return out


@functools.lru_cache(maxsize=None)
def sd_step_compiled(smoke: bool, b: int, remat_mode: str) -> tuple:
    """(comps, batch, compiled step, FLOPs, what the FLOPs count, why remat or not) of the SD step at batch `b`.

    remat_mode "auto" compiles without remat and again with it only when the
    step would not fit in the chip's memory. Cached: the smoke run's three
    step cases share one batch size, so one compile serves them.
    """
    import jax.numpy as jnp

    sizes = SMOKE if smoke else FULL

    def build(remat: bool):
        config = sd_config(sizes, b, remat)
        comps = sd_components(sizes, config, jnp.bfloat16)
        return comps, config, random_init(sd_init(comps))

    comps, config, init = build(remat_mode == "on")
    batch_np = random_batch(config, comps, b)
    print(f"compiling the SD step, batch {b}, remat {config.train.remat}...", flush=True)
    built = compile_step(comps, config, init, batch_np)
    print(f"  compiled in {built['compile_s']:.1f} s; needs {gib(built['need_bytes']) or 0:.1f} GiB", flush=True)
    limit, need = device_info()["bytes_limit_gib"], gib(built["need_bytes"])
    reason = "--remat on" if config.train.remat else "fits" if limit else "no memory limit known"
    if not config.train.remat and remat_mode == "auto" and limit and need and need > 0.95 * limit:
        reason = f"needs {need:.1f} GiB without remat, {limit:.1f} GiB available"
        print(f"  {reason}: compiling with remat...", flush=True)
        first_s = built["compile_s"]
        comps, config, init = build(True)
        built = compile_step(comps, config, init, batch_np)
        built["compile_s"] += first_s
    flops, counted = built["flops"], "the compiled step"
    if config.train.remat:  # MFU counts the model's FLOPs, not remat's recomputation: count a lowering without it
        model = lowered_flops(lower_step(*build(False), batch_np)["lowered"])
        flops, counted = (model, "the step lowered without remat") if model else (
            flops, "the compiled step, remat's recomputation included (hardware FLOPs: MFU reads high)")
    return comps, batch_np, built, flops, counted, reason


def case_sd_step(args, sizes: Sizes, batch: int) -> dict:
    """SD 1.5-sized training step (bf16 over fp32 weights, VAE and text encoder frozen): speed, MFU, memory."""
    b = sizes.batch[batch]
    remat_mode = "on" if batch in sizes.force_remat else args.remat
    comps, batch_np, built, flops, counted, reason = sd_step_compiled(args.smoke, b, remat_mode)
    steps = args.steps or sizes.steps
    print(f"timing {steps} steps...", flush=True)
    profile = os.path.join(args.profile, f"sd_step_b{batch}") if args.profile else None
    out = step_result(built, time_step(built, batch_np, sizes, steps, profile), b, flops)
    remat = comps.model.remat
    if counted != "the compiled step":
        out["note"] = "; ".join(filter(None, [out.get("note"), f"FLOPs: {counted}"]))
    latents = f"{comps.latent_size}x{comps.latent_size}x{comps.autoencoder.channels}"
    return dict(out, frames=sizes.frame, latents=latents, remat=remat, remat_reason=reason, flops_counted=counted,
                profile=profile, mode="bf16 remat" if remat else "bf16")


def case_shapes_step(args, sizes: Sizes) -> dict:
    """configs/shapes.py's step as shipped (float32, batch 16): what a user of the default gets on the chip."""
    import jax.numpy as jnp

    sys.path.insert(0, ROOT)
    from artv_jax import components as components_lib
    from artv_jax import config as config_lib
    from configs import shapes

    c = shapes.get_config()
    if sizes.shapes_unet:
        c.model.unet.update(sizes.shapes_unet)
    if sizes.shapes_batch:
        c.train.global_batch = sizes.shapes_batch
    config = config_lib.validate(c)
    comps, _ = components_lib.build(config, jnp.dtype(config.train.compute_dtype))
    b = config.train.global_batch
    batch_np = random_batch(config, comps, b)
    print(f"compiling the shapes step, batch {b}...", flush=True)
    built = compile_step(comps, config, random_init(comps.init), batch_np)
    steps = args.steps or sizes.steps
    print(f"  compiled in {built['compile_s']:.1f} s; timing {steps} steps...", flush=True)
    out = step_result(built, time_step(built, batch_np, sizes, steps, None), b, built["flops"])
    dtype = config.train.compute_dtype
    return dict(out, flops_counted="the compiled step", steps_s=1.0 / out["pipelined_step_s"],
                mode={"float32": "fp32", "bfloat16": "bf16"}.get(dtype, dtype))


def case_sampler(args, sizes: Sizes, batch: int, frames: int) -> dict:
    """Our `lax.scan` sampler at SD 1.5's size, bf16 weights and compute: seconds per generated frame."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from artv_jax import generate
    from artv_jax.diffusion import sampling

    b, n = sizes.batch[batch], sizes.frames[frames]
    config = sd_config(sizes, b, remat=False)
    comps = sd_components(sizes, config, jnp.bfloat16)
    # bf16 weights drawn as bf16: the process's peak memory is then the sampler's, not the draw's.
    without_vae = lambda key: {k: v for k, v in sd_init(comps)(key).items() if k != "vae"}
    params = jax.jit(random_init(without_vae, jnp.bfloat16))(jax.random.PRNGKey(0))
    settings = sampler_settings(sizes, config.sample)
    sampler = sampling.Sampler(comps.model, comps.schedule, sampling.SamplerConfig(chunk_size=sizes.chunk, **settings))
    emb = generate.embed(comps, params, [PROMPT] * b)
    uncond = jnp.broadcast_to(generate.embed(comps, params, [""]), emb.shape)
    size, c = comps.latent_size, comps.autoencoder.channels
    first = np.random.default_rng(0).standard_normal((1, b, size, size, c)).astype(np.float32)

    def video(generated: int):
        texts = jnp.broadcast_to(emb[None], (generated + 1, *emb.shape))
        return sampling.sample_video(sampler, params["artv"], jax.random.PRNGKey(0), texts, uncond,
                                     first_frames=first, progress=False)

    print(f"compiling the sampler (batch {b}, chunks of {sizes.chunk} frames)...", flush=True)
    start = time.perf_counter()
    video(sizes.chunk)  # compiles the one chunk program every video uses
    warmup_s = time.perf_counter() - start
    print(f"  {warmup_s:.1f} s; timing {sizes.repeats} video(s) of {n} generated frames...", flush=True)
    times = []
    for _ in range(sizes.repeats):
        start = time.perf_counter()
        video(n)  # returns NumPy: the device work is done
        times.append(time.perf_counter() - start)
    return dict(device_info(), batch=b, generated_frames=n, ddim_steps=settings["num_steps"],
                text_guidance=settings["text_guidance"], dtype="bfloat16", warmup_s=warmup_s,
                s_per_frame=float(np.median(times)) / n, video_s=float(np.median(times)),
                peak_mem_gib=peak_memory_gib(), params_unet_adapter=count(params["artv"]),
                compilations=getattr(sampler, "traces", None))  # 1: the timed videos reused the warm-up's program


def sampler_settings(sizes: Sizes, sample) -> dict:
    """25 DDIM steps, deterministic, text guidance as configs/webvid.py samples (7.5), no reference guidance."""
    return dict(num_steps=sizes.ddim_steps, eta=0.0, text_guidance=sample.text_guidance, ref_guidance=1.0,
                ref_level=sample.ref_level)


# ---------------------------------------------------------------- torch cases

def import_torch():
    try:
        import diffusers
        import torch
        import transformers
    except ImportError as e:
        raise RuntimeError(f"torch not installed ({e})") from None
    return torch, diffusers, transformers


def torch_device(args, torch) -> str:
    """--torch_device, or cuda; the CPU only in the smoke run (a CPU figure next to a GPU one compares nothing)."""
    if args.torch_device != "auto":
        return args.torch_device
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as JAX's default on GPUs
        return "cuda"
    if args.smoke:
        return "cpu"
    raise RuntimeError("torch sees no CUDA device (a CPU wheel, or not a GPU): no PyTorch figure for this chip")


def torch_modules(comps, device: str, *names: str) -> list:
    """The named diffusers/transformers modules ("unet", "adapter", "text", "vae") of our architecture, random
    weights, built on `device`."""
    torch, diffusers, transformers = import_torch()
    from artv_jax import export
    from artv_jax.models import adapter as adapter_lib
    from artv_jax.models import artv

    build = {
        "unet": lambda: diffusers.UNet2DConditionModel.from_config(export.unet_config_dict(comps.model.unet_config)),
        "adapter": lambda: diffusers.T2IAdapter.from_config(adapter_lib.adapter_config_dict(
            artv.make_adapter(comps.model.unet_config, comps.model.config))),
        "text": lambda: transformers.CLIPTextModel(transformers.CLIPTextConfig.from_dict(
            export.text_config_dict(comps.text_encoder.config, comps.tokenize))).eval().requires_grad_(False),
        "vae": lambda: diffusers.AutoencoderKL.from_config(
            export.vae_config_dict(comps.autoencoder.vae.config)).eval().requires_grad_(False),
    }
    torch.manual_seed(0)
    with torch.device(device):
        return [build[name]() for name in names]


def torch_memory(torch, device: str) -> dict:
    if not device.startswith("cuda"):
        return dict(peak_mem_gib=None)
    return dict(peak_mem_gib=gib(torch.cuda.max_memory_allocated()), reserved_mem_gib=gib(
        torch.cuda.max_memory_reserved()), device_kind=torch.cuda.get_device_name())


def case_torch_step(args, sizes: Sizes, batch: int, compiled: bool) -> dict:
    """The SD-sized step in PyTorch (`make_torch_step` of benchmarks/train_step.py) under bf16 autocast."""
    import importlib.util

    import jax.numpy as jnp
    import numpy as np

    torch, diffusers, _ = import_torch()
    diffusers.utils.logging.set_verbosity_error()
    spec = importlib.util.spec_from_file_location("benchmark_train_step", os.path.join(ROOT, "benchmarks",
                                                                                       "train_step.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    device = torch_device(args, torch)
    b = sizes.batch[batch]
    config = sd_config(sizes, b, remat=False)
    comps = sd_components(sizes, config, jnp.float32)
    batch_np = random_batch(config, comps, b)
    unet, text, vae = torch_modules(comps, device, "unet", "text", "vae")  # make_torch_step adds the adapter
    scale, shift = comps.autoencoder.vae.config.scaling_factor, comps.autoencoder.vae.config.shift_factor or 0.0
    if compiled:
        unet = torch.compile(unet, backend=sizes.compile_backend)
    modules = dict(unet=unet, text=text, train_text=False, to_device=[vae],
                   encode=lambda x: (vae.encode(x).latent_dist.mean - shift) * scale)
    step, n_params = bench.make_torch_step(config, comps, modules, batch_np, device)

    def run():
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            return step()  # float(loss) at its end waits for the step's kernels

    what = "compile" if compiled else "eager"
    print(f"torch step ({what}) on {device}, batch {b}: warm-up...", flush=True)
    start = time.perf_counter()
    run()
    first_s = time.perf_counter() - start
    for _ in range(sizes.warmup - 1):
        run()
    steps = args.steps or sizes.steps
    print(f"  first step {first_s:.1f} s; timing {steps} steps...", flush=True)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = run()
        times.append(time.perf_counter() - start)
    counted = None
    if not compiled:  # torch's own count of one step (matmuls, convolutions, attention): a check on XLA's
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            run()
        counted = float(counter.get_total_flops())
    step_s = float(np.median(times))
    return dict(torch_memory(torch, device), torch=torch.__version__, torch_device=device, batch=b,
                mode=what, first_step_s=first_s, compile_s=first_s if compiled else None, step_s=step_s,
                step_s_min=min(times), step_s_mean=float(np.mean(times)), timed_steps=steps,
                examples_s=b / step_s, loss=loss, params_trainable=n_params, precision="bf16 autocast",
                compile_backend=sizes.compile_backend if compiled else None,
                torch_counted_flops=counted)


def case_torch_sampler(args, sizes: Sizes, batch: int, frames: int) -> dict:
    """`artv_jax/torch_sampler.py` on the same architecture, UNet and adapter in bf16: seconds per frame."""
    import jax.numpy as jnp
    import numpy as np

    torch, diffusers, _ = import_torch()
    diffusers.utils.logging.set_verbosity_error()  # "modules that should be kept in float32: []"
    from artv_jax import export
    from artv_jax.torch_sampler import TorchSampler, torch_noise

    device = torch_device(args, torch)
    b, n = sizes.batch[batch], sizes.frames[frames]
    config = sd_config(sizes, b, remat=False)
    comps = sd_components(sizes, config, jnp.float32)
    unet, adapter, text = torch_modules(comps, device, "unet", "adapter", "text")
    scheduler = diffusers.DDIMScheduler.from_config(export.scheduler_config_dict(comps.schedule))
    sampler = TorchSampler(unet.to(torch.bfloat16).eval(), adapter.to(torch.bfloat16).eval(), text, comps.tokenize,
                           scheduler, export.artv_config_dict(comps, config, None))
    settings = sampler_settings(sizes, config.sample)
    c, size, r = comps.autoencoder.channels, comps.latent_size, comps.model.config.num_ref_frames
    generator = torch.Generator().manual_seed(0)
    emb = sampler.encode_prompts([PROMPT] * b)
    uncond = sampler.encode_prompts([""]).expand(b, -1, -1)
    first = torch.randn((1, b, c, size, size), generator=generator)

    def video(generated: int):
        texts = emb[None].expand(generated + 1, -1, -1, -1)
        noise = torch_noise(generator, (b, c, size, size), r, settings["num_steps"])
        sampler.sample_latents(texts, uncond, first_frames=first, noise=noise, **settings)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()  # the sampler's peak, not the fp32 -> bf16 conversion's
    print(f"torch sampler on {device}, batch {b}: warm-up...", flush=True)
    start = time.perf_counter()
    video(1)
    warmup_s = time.perf_counter() - start
    print(f"  {warmup_s:.1f} s; timing {sizes.repeats} video(s) of {n} generated frames...", flush=True)
    times = []
    for _ in range(sizes.repeats):
        start = time.perf_counter()
        video(n)
        times.append(time.perf_counter() - start)
    return dict(torch_memory(torch, device), torch=torch.__version__, torch_device=device, batch=b,
                generated_frames=n, ddim_steps=settings["num_steps"], text_guidance=settings["text_guidance"],
                dtype="bfloat16", warmup_s=warmup_s, s_per_frame=float(np.median(times)) / n,
                video_s=float(np.median(times)))


# ---------------------------------------------------------------- one case (a child process)

CASE_FUNCTIONS = {"sd_step": case_sd_step, "shapes_step": case_shapes_step, "sampler": case_sampler,
                  "torch_step": case_torch_step, "torch_sampler": case_torch_sampler}


def short_error(e: BaseException) -> str:
    text = " ".join(str(e).split())
    oom = "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
    return ("out of memory: " if oom else "") + f"{type(e).__name__}: {text[:400]}"


def run_cases(args) -> None:
    """Runs the cases of `args.case` (comma-separated) in this process, one after another, each writing its
    result (or its error) to `<args.result_dir>/<case>.json` as it ends."""
    sizes = SMOKE if args.smoke else FULL
    for name in args.case.split(","):
        start, cpu = time.perf_counter(), time.process_time()
        kind, kwargs = CASES[name]
        if not kind.startswith("torch"):
            import jax

            if args.cache_dir:
                jax.config.update("jax_compilation_cache_dir", os.path.expanduser(args.cache_dir))
            if args.smoke:  # compile fast; the smoke run's speed means nothing
                jax.config.update("jax_disable_most_optimizations", True)
        try:
            out = dict(CASE_FUNCTIONS[kind](args, sizes, **kwargs), status="ok")
        except Exception as e:  # recorded as the case's result; the next case runs
            import traceback

            traceback.print_exc()
            out = dict(status="error", error=short_error(e))
        out.update(kind=kind, case_s=time.perf_counter() - start, case_cpu_s=time.process_time() - cpu,
                   tensorflow_imported="tensorflow" in {m.split(".")[0] for m in sys.modules},
                   torch_imported="torch" in sys.modules)  # by a JAX case: a JAX-only machine would fail it
        path = os.path.join(args.result_dir, name + ".json")
        with open(path + ".tmp", "w") as f:  # whole or absent, even if this process is killed now
            json.dump(out, f)
        os.replace(path + ".tmp", path)


