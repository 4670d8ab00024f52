"""Text -> fixed-length token ids: a word-level tokenizer for the shapes world, and CLIP's BPE.

Both are callables `tokenize(text: str) -> np.ndarray[int32] (max_length,)`
laid out as CLIP does: begin token, words, end token, then padding with the
end token (CLIP's pad), so the same text encoder code serves both.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

SPECIAL = ("<|startoftext|>", "<|endoftext|>", "<|unk|>")


@dataclasses.dataclass(frozen=True)
class WordTokenizer:
    """Lower-cased whitespace words over a fixed vocabulary; unknown words map to `<|unk|>`.

    Ids: 0 = begin, 1 = end (also the pad), 2 = unknown, then the vocabulary in order.
    """

    vocabulary: tuple[str, ...]
    max_length: int = 12

    def __post_init__(self):
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise ValueError("the vocabulary has duplicate words.")

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL) + len(self.vocabulary)

    @property
    def eos_token_id(self) -> int:
        return 1

    def __call__(self, text: str) -> np.ndarray:
        index = {w: i + len(SPECIAL) for i, w in enumerate(self.vocabulary)}
        words = re.findall(r"[a-z0-9]+", text.lower())
        ids = [0] + [index.get(w, 2) for w in words] + [1]
        if len(ids) > self.max_length:
            raise ValueError(f"{text!r} has {len(words)} words; at most {self.max_length - 2} fit.")
        return np.asarray(ids + [1] * (self.max_length - len(ids)), np.int32)


@dataclasses.dataclass(frozen=True)
class CLIPTokenize:
    """A transformers `CLIPTokenizer` as a fixed-length callable (truncating, as SD pipelines do)."""

    tokenizer: object
    max_length: int = 77

    def __call__(self, text: str) -> np.ndarray:
        out = self.tokenizer(text, padding="max_length", max_length=self.max_length, truncation=True)
        return np.asarray(out["input_ids"], np.int32)


def tokenize_all(tokenize, texts: Sequence[str]) -> np.ndarray:
    """(N, max_length) ids for a list of texts."""
    return np.stack([tokenize(t) for t in texts])
