"""Text -> fixed-length token ids: a word-level tokenizer for the shapes world, and CLIP's BPE.

Both are callables `tokenize(text: str) -> np.ndarray[int32] (max_length,)`
laid out as CLIP does: begin token, words, end token, then padding with the
end token (CLIP's pad), so the same text encoder code serves both.

A text the word tokenizer cannot represent (a word outside its vocabulary,
more words than fit) is a ValueError naming the problem, never a silent
`<|unk|>`; CLIP's BPE spells any text and cuts it at the token limit, and
`CLIPTokenize.cut_off` says what a cut drops.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

SPECIAL = ("<|startoftext|>", "<|endoftext|>", "<|unk|>")


@dataclasses.dataclass(frozen=True)
class WordTokenizer:
    """Lower-cased words over a fixed vocabulary; a word outside it is a ValueError that lists the vocabulary.

    Ids: 0 = begin, 1 = end (also the pad), 2 = unknown (kept so ids and
    embedding tables stay as trained; never produced), then the vocabulary in order.
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
        unknown = [w for w in dict.fromkeys(words) if w not in index]
        if unknown:
            raise ValueError(f"{text!r} has words outside this model's vocabulary: {', '.join(unknown)}; "
                             f"it knows: {', '.join(self.vocabulary)}.")
        if len(words) > self.max_length - 2:
            raise ValueError(f"{text!r} has {len(words)} words; this model's text encoder takes at most "
                             f"{self.max_length - 2}.")
        ids = [0] + [index[w] for w in words] + [1]
        return np.asarray(ids + [1] * (self.max_length - len(ids)), np.int32)


@dataclasses.dataclass(frozen=True)
class CLIPTokenize:
    """A transformers `CLIPTokenizer` as a fixed-length callable (truncating, as SD pipelines do)."""

    tokenizer: object
    max_length: int = 77

    def __call__(self, text: str) -> np.ndarray:
        out = self.tokenizer(text, padding="max_length", max_length=self.max_length, truncation=True)
        return np.asarray(out["input_ids"], np.int32)

    def cut_off(self, text: str) -> str:
        """The end of `text` that falls past the token limit and is dropped ("" when it fits)."""
        ids = self.tokenizer(text, truncation=False, verbose=False)["input_ids"]  # begin, text..., end
        if len(ids) <= self.max_length:
            return ""
        return self.tokenizer.decode(ids[self.max_length - 1:-1]).strip()


def tokenize_all(tokenize, texts: Sequence[str]) -> np.ndarray:
    """(N, max_length) ids for a list of texts."""
    return np.stack([tokenize(t) for t in texts])
