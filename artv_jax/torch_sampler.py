"""ART·V sampling in PyTorch on an exported directory (`artv_jax.export`): diffusers and transformers modules only.

    sampler = TorchSampler.from_pretrained("exported/shapes")
    video = sampler.generate(["a red square moving right on a black background"], num_frames=16,
                             generator=torch.Generator().manual_seed(0))          # uint8 (B, N, H, W, 3)

The loop of `artv_jax/diffusion/sampling.py`, written against diffusers'
`UNet2DConditionModel` (one extra output channel: the mask logits) and
`T2IAdapter` (its features go in as `down_intrablock_additional_residuals`),
transformers' `CLIPTextModel` and diffusers' `DDIMScheduler` tables:

- frame i >= 1: DDIM from noise; the adapter sees the last R frames noised to
  `ref_level` (+ a constant noise-level plane) and frame 0 (the anchor); the
  prediction is blended with the previous frame in x0 space by
  m = sigmoid(mask logits); classifier-free guidance on the text (and on the
  references when `ref_guidance` != 1).
- frame 0 of a text-to-video: references dropped (no adapter features, m := 1).
- image-to-video / continuation: the given first frames start the window.

Arrays are NCHW here. Randomness comes from a noise source `noise(i) ->
FrameNoise` for frame i; `jax_noise` gives exactly the numbers our JAX sampler
draws, so both samplers can be compared to float precision. Anchor attention
is not implemented here (NotImplementedError).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from artv_jax.export import WORD_TOKENIZER, read_artv_config


@dataclasses.dataclass(frozen=True)
class FrameNoise:
    """The random numbers of one frame (NCHW): starting noise, reference augmentation noise, per-step DDIM noise."""

    init: np.ndarray | torch.Tensor  # (B, C, H, W)
    refs: np.ndarray | torch.Tensor  # (B, R*C, H, W)
    steps: np.ndarray | torch.Tensor  # (S, B, C, H, W); used only with eta > 0


NoiseSource = Callable[[int], FrameNoise]


@dataclasses.dataclass(frozen=True)
class Settings:
    """How frames are denoised (defaults: the exported run's `sample` config)."""

    num_steps: int = 25
    eta: float = 0.0
    text_guidance: float = 7.5
    ref_guidance: float = 1.0
    ref_level: float = 0.0
    history_level: float = 1.0  # the weaker history of history guidance: 1 (none) is the one this sampler has

    def __post_init__(self):
        if self.ref_guidance != 1.0 and self.history_level != 1.0:
            raise ValueError(f"fractional history guidance (history_level {self.history_level} < 1) is not in "
                             f"the PyTorch sampler; sample with artv_jax, or set history_level=1 (no history).")


def jax_noise(key, latent_shape: Sequence[int], num_ref_frames: int, num_steps: int) -> NoiseSource:
    """The noise `artv_jax.diffusion.sampling` draws for frame i, as NCHW NumPy (imports jax).

    Mirrors `Sampler.denoise_frame`: frame i uses fold_in(key, i) split into
    (init, refs, steps); step s draws from fold_in(steps key, s).
    `latent_shape` is (B, C, H, W).
    """
    import jax
    import jax.numpy as jnp

    b, c, h, w = latent_shape
    shape = (b, h, w, c)

    @jax.jit
    def draw(index):
        k_init, k_ref, k_steps = jax.random.split(jax.random.fold_in(key, index), 3)
        init = jax.random.normal(k_init, shape, jnp.float32)
        refs = jax.random.normal(k_ref, (b, h, w, c * num_ref_frames), jnp.float32)
        steps = jnp.stack([jax.random.normal(jax.random.fold_in(k_steps, s), shape, jnp.float32)
                           for s in range(num_steps)])
        return init, refs, steps

    def frame(index: int) -> FrameNoise:
        init, refs, steps = (np.asarray(a) for a in draw(jnp.asarray(index, jnp.int32)))
        return FrameNoise(init.transpose(0, 3, 1, 2), refs.transpose(0, 3, 1, 2), steps.transpose(0, 1, 4, 2, 3))

    return frame


def torch_noise(generator: torch.Generator | None, latent_shape: Sequence[int], num_ref_frames: int,
                num_steps: int) -> NoiseSource:
    """Noise from a torch generator, drawn frame by frame in order (init, refs, steps)."""
    b, c, h, w = latent_shape

    def frame(index: int) -> FrameNoise:
        del index
        randn = lambda *s: torch.randn(s, generator=generator, dtype=torch.float32)
        return FrameNoise(randn(b, c, h, w), randn(b, c * num_ref_frames, h, w), randn(num_steps, b, c, h, w))

    return frame


class TorchSampler:
    """The exported modules and the ART·V sampling loop in PyTorch."""

    def __init__(self, unet, adapter, text_encoder, tokenize, scheduler, config: dict, vae=None):
        if config["anchor_attention"]:
            raise NotImplementedError("the PyTorch sampler does not implement anchor attention; sample this model "
                                      "with artv_jax (python -m artv_jax.sample).")
        self.unet, self.adapter, self.text_encoder, self.vae = unet, adapter, text_encoder, vae
        self.tokenize, self.scheduler, self.config = tokenize, scheduler, config
        self.num_ref_frames = config["num_ref_frames"]
        self.use_mask = bool(config["mask"]["use_mask"])  # the ablation switches the model was trained with
        self.use_anchor = bool(config["use_anchor"])
        self.latent_channels = config["latent_channels"]
        self.prediction_type = scheduler.config.prediction_type
        self.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float32)
        self.final_alpha_cumprod = float(scheduler.final_alpha_cumprod)
        sample = config["sample"]
        self.settings = Settings(**{f.name: sample[f.name] for f in dataclasses.fields(Settings) if f.name in sample})

    @classmethod
    def from_pretrained(cls, path: str, device: str | torch.device = "cpu") -> TorchSampler:
        """Loads an `artv_jax.export` directory (float32)."""
        import diffusers
        import transformers

        from artv_jax.tokenizers import CLIPTokenize, WordTokenizer

        config = read_artv_config(path)
        if config["anchor_attention"]:
            raise NotImplementedError("the PyTorch sampler does not implement anchor attention; sample this model "
                                      "with artv_jax (python -m artv_jax.sample).")
        load = lambda cls_, name: cls_.from_pretrained(os.path.join(path, name)).to(device).eval()
        unet = load(diffusers.UNet2DConditionModel, "unet")
        adapter = load(diffusers.T2IAdapter, "adapter")
        text_encoder = load(transformers.CLIPTextModel, "text_encoder")
        vae = load(diffusers.AutoencoderKL, "vae") if config["autoencoder"]["kind"] == "vae" else None
        scheduler = diffusers.DDIMScheduler.from_pretrained(os.path.join(path, "scheduler"))
        tok_dir = os.path.join(path, "tokenizer")
        if config["tokenizer"]["kind"] == "word":
            with open(os.path.join(tok_dir, WORD_TOKENIZER)) as f:
                word = json.load(f)
            tokenize = WordTokenizer(tuple(word["vocabulary"]), max_length=word["max_length"])
        else:
            tokenizer = transformers.CLIPTokenizer.from_pretrained(tok_dir)
            tokenize = CLIPTokenize(tokenizer, tokenizer.model_max_length)
        return cls(unet, adapter, text_encoder, tokenize, scheduler, config, vae)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    # ------------------------------------------------------------------ text and autoencoder

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, L, D) CLIP token embeddings (last hidden state) of a batch of prompts."""
        ids = torch.from_numpy(np.stack([self.tokenize(p) for p in prompts]).astype(np.int64)).to(self.device)
        return self.text_encoder(input_ids=ids).last_hidden_state.float()

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) frames -> (B, C, h, w) latents (the VAE's posterior mean, scaled)."""
        x = torch.from_numpy(np.asarray(frames, np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).to(self.device)
        auto = self.config["autoencoder"]
        if self.vae is None:
            return F.pixel_unshuffle(x, auto["patch"])
        mean = self.vae.encode(x).latent_dist.mean
        return (mean - (auto["shift_factor"] or 0.0)) * auto["scaling_factor"]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, H, W) frames in [-1, 1] (not clipped)."""
        auto = self.config["autoencoder"]
        if self.vae is None:
            return F.pixel_shuffle(latents, auto["patch"])
        return self.vae.decode(latents / auto["scaling_factor"] + (auto["shift_factor"] or 0.0)).sample.float()

    # ------------------------------------------------------------------ one frame

    def _alpha_bar_at_level(self, level: float) -> torch.Tensor:
        """ᾱ at noise level s in [0, 1] as `NoiseSchedule.alpha_bar_at_level` (ᾱ_{-1} = 1, linear in between)."""
        total = len(self.alphas_cumprod)
        table = torch.cat([torch.ones(1), self.alphas_cumprod.cpu()])
        pos = torch.clamp(torch.tensor(level, dtype=torch.float32) * total - 1.0 + 1.0, 0.0, float(total))
        lo = torch.clamp(torch.floor(pos), max=total - 1).long()
        w = pos - lo
        return (table[lo] * (1.0 - w) + table[lo + 1] * w).to(self.device)

    def _coefs(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alphas_cumprod[t].to(self.device)
        return torch.sqrt(a), torch.sqrt(1.0 - a)

    def reference_output(self, x_t: torch.Tensor, x_ref: torch.Tensor, t: int) -> torch.Tensor:
        """The network output (ε, v or x0) that implies x0 = x_ref at x_t (`masked.reference_output`)."""
        sa, sb = self._coefs(t)
        if self.prediction_type == "epsilon":
            return (x_t - sa * x_ref) / sb
        if self.prediction_type == "sample":
            return x_ref
        return (sa * x_t - x_ref) / sb

    def ddim_step(self, out: torch.Tensor, t: int, t_prev: int, x: torch.Tensor, eta: float,
                  noise: torch.Tensor) -> torch.Tensor:
        """x_t -> x_{t_prev} as `NoiseSchedule.ddim_step` (t_prev < 0: to x0, with the final ᾱ)."""
        a = self.alphas_cumprod[t].to(self.device)
        sa, sb = torch.sqrt(a), torch.sqrt(1.0 - a)
        a_prev = self.alphas_cumprod[t_prev].to(self.device) if t_prev >= 0 else torch.tensor(
            self.final_alpha_cumprod, device=self.device)
        if self.prediction_type == "epsilon":
            x0, eps = (x - sb * out) / sa, out
        elif self.prediction_type == "sample":
            x0, eps = out, (x - sa * out) / sb
        else:
            x0, eps = sa * x - sb * out, sb * x + sa * out
        if self.scheduler.config.clip_sample:
            r = self.scheduler.config.clip_sample_range
            x0 = torch.clamp(x0, -r, r)
        x_prev = torch.sqrt(a_prev) * x0
        if eta == 0:
            return x_prev + torch.sqrt(1.0 - a_prev) * eps
        std = eta * torch.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
        return x_prev + torch.sqrt(torch.clamp(1.0 - a_prev - std ** 2, min=0.0)) * eps + std * noise

    def adapter_features(self, refs: torch.Tensor, anchor: torch.Tensor, level: float) -> list[torch.Tensor]:
        """The T2IAdapter's features of concat(refs, anchor, level plane): one per UNet down block."""
        plane = torch.full_like(anchor[:, :1], level)
        if not self.use_anchor:
            anchor = torch.zeros_like(anchor)
        return self.adapter(torch.cat([refs, anchor, plane], dim=1).to(self.unet.dtype))

    def guided_output(self, x, t: int, cond, uncond, x_ref, features, drop_refs: bool, s: Settings):
        """The guided, mask-blended model output at (x, t) (`Sampler.guided_output`)."""
        if drop_refs:
            branches = [(cond, True), (uncond, True)]
        elif s.ref_guidance == 1.0:
            branches = [(cond, False), (uncond, False)]
        else:
            branches = [(cond, False), (uncond, False), (uncond, True)]
        n, b = len(branches), x.shape[0]
        drop = torch.tensor([d for _, d in branches for _ in range(b)], device=self.device)[:, None, None, None]
        residuals = None
        if features is not None:  # dropped references: zero features (all dropped: no residual at all)
            keep = (~drop).to(features[0].dtype)
            residuals = [torch.cat([f] * n) * keep for f in features]
        tile = lambda a: torch.cat([a] * n)
        out = self.unet(tile(x).to(self.unet.dtype), torch.full((n * b,), t, dtype=torch.long, device=self.device),
                        torch.cat([e for e, _ in branches]).to(self.unet.dtype),
                        down_intrablock_additional_residuals=residuals).sample.float()
        pred, logits = out[:, :-1], out[:, -1:]
        mask = torch.sigmoid(logits) if self.use_mask else torch.ones_like(logits)
        mask = torch.where(drop, torch.ones_like(logits), mask)
        blended = mask * pred + (1.0 - mask) * self.reference_output(tile(x), tile(x_ref), t)
        outs = blended.chunk(n)
        if n == 2:
            return outs[1] + s.text_guidance * (outs[0] - outs[1])
        e_tr, e_0r, e_00 = outs
        return e_00 + s.ref_guidance * (e_0r - e_00) + s.text_guidance * (e_tr - e_0r)

    def timesteps(self, num_steps: int) -> list[int]:
        self.scheduler.set_timesteps(num_steps)
        ts = [int(t) for t in self.scheduler.timesteps]
        if len(ts) != num_steps:
            raise ValueError(f"DDIMScheduler gives {len(ts)} timesteps for {num_steps} steps "
                             f"({self.scheduler.config.timestep_spacing} spacing); choose another num_steps.")
        return ts

    @torch.no_grad()
    def denoise_frame(self, noise: FrameNoise, cond, uncond, window, anchor, s: Settings,
                      drop_refs: bool = False) -> torch.Tensor:
        """One frame: DDIM from `noise.init` to a clean latent (`Sampler.denoise_frame`)."""
        as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device)
        ts = self.timesteps(s.num_steps)
        a = self._alpha_bar_at_level(s.ref_level)
        refs = torch.sqrt(a) * window + torch.sqrt(1.0 - a) * as_tensor(noise.refs)
        features = None if drop_refs else self.adapter_features(refs, anchor, s.ref_level)
        x_ref = window[:, -self.latent_channels:]
        x = as_tensor(noise.init)
        for i, t in enumerate(ts):
            out = self.guided_output(x, t, cond, uncond, x_ref, features, drop_refs, s)
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            x = self.ddim_step(out, t, t_prev, x, s.eta, as_tensor(noise.steps[i]) if s.eta else None)
        return x

    # ------------------------------------------------------------------ the video

    @torch.no_grad()
    def sample_latents(self, texts: torch.Tensor, uncond: torch.Tensor, *, first_frames: torch.Tensor | None = None,
                       latent_shape: Sequence[int] | None = None, noise: NoiseSource | None = None,
                       generator: torch.Generator | None = None, **settings) -> torch.Tensor:
        """Generates a video autoregressively; returns (N, B, C, h, w) latents, given frames included.

        Args:
          texts: (N, B, L, D) the text embedding of every frame (a prompt schedule).
          uncond: (B, L, D) the empty prompt's embedding.
          first_frames: None for text-to-video (give `latent_shape` (B, C, h, w));
            (F, B, C, h, w) latents for image-to-video (F = 1) or continuation.
          noise: the noise source (default: `torch_noise(generator, ...)`).
          settings: overrides of `self.settings` (num_steps, eta, text_guidance, ref_guidance, ref_level).
        """
        s = dataclasses.replace(self.settings, **settings)
        texts, uncond = texts.to(self.device), uncond.to(self.device)
        r, c, n = self.num_ref_frames, self.latent_channels, texts.shape[0]
        shape = tuple(latent_shape) if first_frames is None else tuple(first_frames.shape[1:])
        if first_frames is None and latent_shape is None:
            raise ValueError("text-to-video needs latent_shape (B, C, h, w); image-to-video needs first_frames.")
        noise = noise or torch_noise(generator, shape, r, s.num_steps)
        if first_frames is None:
            zeros = torch.zeros(shape, device=self.device)
            frame0 = self.denoise_frame(noise(0), texts[0], uncond, zeros.repeat(1, r, 1, 1), zeros, s,
                                        drop_refs=True)
            first_frames = frame0[None]
        frames = list(first_frames.to(self.device, torch.float32))
        if len(frames) > n:
            raise ValueError(f"{len(frames)} given frames for a video of {n} frames.")
        window = torch.cat(([frames[0]] * max(0, r - len(frames)) + frames)[-r:], dim=1)
        for i in range(len(frames), n):
            frame = self.denoise_frame(noise(i), texts[i], uncond, window, frames[0], s)
            window = torch.cat([window[:, c:], frame], dim=1)
            frames.append(frame)
        return torch.stack(frames)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str] | Sequence[Sequence[str]], num_frames: int, *,
                 first_frames: np.ndarray | None = None, noise: NoiseSource | None = None,
                 generator: torch.Generator | None = None, **settings) -> np.ndarray:
        """uint8 (B, N, H, W, 3) videos, as `artv_jax.generate.generate`.

        prompts: B prompts, or a per-frame schedule (N lists of B prompts);
        first_frames: optional uint8 (B, F, H, W, 3), kept as given.
        """
        per_frame = not isinstance(prompts[0], str)
        schedule = [list(p) for p in prompts] if per_frame else [list(prompts)] * num_frames
        if len(schedule) != num_frames:
            raise ValueError(f"a per-frame prompt schedule needs {num_frames} entries, got {len(schedule)}.")
        unique = sorted({p for frame in schedule for p in frame})
        table = dict(zip(unique, self.encode_prompts(unique)))
        texts = torch.stack([torch.stack([table[p] for p in frame]) for frame in schedule])
        batch = texts.shape[1]
        uncond = self.encode_prompts([""]).expand(batch, -1, -1)
        size = self.config["latent_size"]
        encoded = None
        if first_frames is not None:
            encoded = torch.stack([self.encode_frames(first_frames[:, i]) for i in range(first_frames.shape[1])])
        latents = self.sample_latents(texts, uncond, first_frames=encoded,
                                      latent_shape=(batch, self.latent_channels, size, size), noise=noise,
                                      generator=generator, **settings)
        pixels = torch.stack([self.decode(z) for z in latents]).permute(1, 0, 3, 4, 2).cpu().numpy()
        videos = np.clip(np.round((pixels + 1.0) * 127.5), 0, 255).astype(np.uint8)
        if first_frames is not None:
            videos[:, :first_frames.shape[1]] = first_frames
        return videos


__all__ = ["FrameNoise", "NoiseSource", "Settings", "TorchSampler", "jax_noise", "torch_noise"]
