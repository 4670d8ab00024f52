"""Shared test helpers: tiny Stable Diffusion pieces written to disk as a user would have them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLIP_DATA = REPO.parent / "shared" / "data" / "clip"


def write_sd_tokenizer(path: Path, with_config: bool = True) -> Path:
    """A tokenizer directory like SD 1.x's `tokenizer/`, from the shared real CLIP vocab and merges."""
    if not (CLIP_DATA / "vocab.json").is_file() or not (CLIP_DATA / "merges.txt").is_file():
        pytest.skip(f"CLIP vocab.json/merges.txt not found in {CLIP_DATA} (expected at <repo>/../shared/data/clip)")
    path.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(CLIP_DATA / name, path / name)
    if with_config:
        def token(content):
            return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
                    "rstrip": False, "single_word": False}

        (path / "tokenizer_config.json").write_text(json.dumps({
            "add_prefix_space": False, "bos_token": token("<|startoftext|>"), "do_lower_case": True,
            "eos_token": token("<|endoftext|>"), "errors": "replace", "model_max_length": 77,
            "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer", "unk_token": token("<|endoftext|>")}))
        (path / "special_tokens_map.json").write_text(json.dumps({
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>"}))
    return path


def randomize(model, seed: int = 0, scale: float = 0.2):
    """Gives every parameter of a torch model random values (diffusers zero-initialises some convs)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def write_tiny_sd(root: Path, cross_attention_dim: int = 32) -> dict:
    """A whole tiny random SD 1.x-like diffusers pipeline directory; returns the torch modules by component."""
    import diffusers
    import transformers

    unet = randomize(diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, attention_head_dim=4,
        cross_attention_dim=cross_attention_dim, norm_num_groups=8, sample_size=8).eval(), seed=0)
    vae = randomize(diffusers.AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4, sample_size=16).eval(), seed=1)
    text = randomize(transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=cross_attention_dim, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu")).eval(), seed=2, scale=0.05)
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text.save_pretrained(root / "text_encoder")
    scheduler.save_pretrained(root / "scheduler")
    write_sd_tokenizer(root / "tokenizer")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return {"unet": unet, "vae": vae, "text_encoder": text}
