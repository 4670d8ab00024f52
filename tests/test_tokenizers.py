"""Tokenizers refuse what they cannot represent (the word tokenizer) or say what they cut (CLIP's), never silently."""

from __future__ import annotations

import numpy as np
import pytest

from artv_jax import sample
from artv_jax.data import shapes
from artv_jax.tokenizers import SPECIAL, CLIPTokenize, WordTokenizer
from helpers import write_sd_tokenizer

WORDS = WordTokenizer(shapes.VOCABULARY, max_length=12)


def test_every_caption_of_the_world_and_the_empty_prompt_tokenize_as_before():
    index = {w: i + len(SPECIAL) for i, w in enumerate(shapes.VOCABULARY)}
    for caption in shapes.all_captions():
        words = caption.split()
        want = [0] + [index[w] for w in words] + [1] * (12 - len(words) - 1)
        np.testing.assert_array_equal(WORDS(caption), want)
    np.testing.assert_array_equal(WORDS(""), [0] + [1] * 11)
    np.testing.assert_array_equal(WORDS("A Red, SQUARE!"), WORDS("a red square"))


def test_words_outside_the_vocabulary_are_refused_by_name():
    with pytest.raises(ValueError) as e:
        WORDS("a purple hexagon moving sideways on a plaid background")
    assert str(e.value) == ("'a purple hexagon moving sideways on a plaid background' has words outside this model's "
                            "vocabulary: purple, hexagon, sideways, plaid; it knows: " + ", ".join(shapes.VOCABULARY)
                            + ".")


def test_a_prompt_longer_than_the_text_encoder_takes_is_refused():
    with pytest.raises(ValueError, match="has 11 words; this model's text encoder takes at most 10"):
        WORDS("a red square moving right on a black background a red")
    WORDS("a red square moving right on a black background a")  # 10 words fit


def _request(*prompts):
    return sample.make_request(list(prompts), [1] * len(prompts) if len(prompts) > 1 else [], 2, "", "")


def test_check_prompts_refuses_for_the_word_tokenizer_and_warns_for_none():
    assert sample.check_prompts(_request("a red square moving right on a black background"), WORDS) == []
    with pytest.raises(ValueError, match="outside this model's vocabulary: purple"):
        sample.check_prompts(_request("a red square moving right on a black background", "a purple square"), WORDS)


def test_clip_knows_every_word_and_warns_when_a_prompt_is_cut(tmp_path):
    from artv_jax.pretrained import load_tokenizer

    tokenize = CLIPTokenize(load_tokenizer(str(write_sd_tokenizer(tmp_path / "tokenizer"))), max_length=77)
    short = "a purple hexagon moving sideways on a plaid background"
    assert tokenize.cut_off(short) == ""
    assert sample.check_prompts(_request(short), tokenize) == []
    long = " ".join(["red"] * 75 + ["and", "then", "a", "blue", "circle"])  # 80 words, one token each
    assert tokenize.cut_off(long) == "and then a blue circle"
    np.testing.assert_array_equal(tokenize(long), tokenize(" ".join(["red"] * 75)))  # what the encoder sees
    (warning,) = sample.check_prompts(_request(long), tokenize)
    assert warning.endswith("is longer than the text encoder's 77 tokens: 'and then a blue circle' is cut off and "
                            "ignored.")
