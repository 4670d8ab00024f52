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
