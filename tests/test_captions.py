"""Captions made from labels and the character tokenizer (genjax.captions)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genjax import captions as C


def test_phrasings_name_their_digit_and_splits_are_disjoint():
    for c in range(10):
        train, held = C.phrasings(c, "train"), C.phrasings(c, "held_out")
        assert len(train) == len(C.TRAIN_TEMPLATES) and len(held) == len(C.HELD_OUT_TEMPLATES)
        assert not set(train) & set(held)
        assert all(C.named_digit(p) == c for p in train + held)
    assert {"an eight", "a handwritten eight", "an image of an eight"} <= set(C.phrasings(8))
    assert "an 8 written by hand" in C.phrasings(8, "held_out")
    assert {"a one", "an image of a one"} <= set(C.phrasings(1))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet=C.ALPHABET, max_size=C.MAX_LENGTH - 2), min_size=1, max_size=5))
def test_tokenize_then_detokenize_is_the_identity(texts):
    tokens, lengths = C.tokenize(texts)
    assert tokens.shape == (len(texts), C.MAX_LENGTH) and tokens.dtype == np.int32
    np.testing.assert_array_equal(lengths, [len(t) + 2 for t in texts])
    assert C.detokenize(tokens) == texts
    assert (tokens[:, 0] == C.BOS).all()
    assert all(
        row[n - 1] == C.EOS and (row[n:] == C.PAD).all()
        for row, n in zip(tokens, lengths, strict=True)
    )


def test_tokenize_refuses_bad_text_by_name():
    with pytest.raises(ValueError, match=r"texts\[1\].*outside ALPHABET"):
        C.tokenize(["seven", "Seven"])
    with pytest.raises(ValueError, match=r"texts\[0\].*at most"):
        C.tokenize(["x" * 31])
    with pytest.raises(TypeError, match="single str"):
        C.tokenize("seven")
    with pytest.raises(ValueError, match="split must be one of"):
        C.phrasings(3, "test")
    with pytest.raises(ValueError, match="label must be"):
        C.phrasings(10)


def test_draw_captions_draws_every_phrasing_of_the_label_under_jit():
    labels = np.repeat(np.arange(10), 200)
    tokens, lengths = jax.jit(C.draw_captions, static_argnums=2)(jax.random.key(0), labels, "train")
    texts = C.detokenize(np.asarray(tokens))
    for c in range(10):
        drawn = {t for t, y in zip(texts, labels, strict=True) if y == c}
        assert drawn == set(C.phrasings(c, "train"))  # 200 draws of 8 phrasings: all appear
    np.testing.assert_array_equal(np.asarray(lengths), [len(t) + 2 for t in texts])


@pytest.mark.parametrize(
    ("text", "digit"),
    [
        ("the digit 7", 7),
        ("a handwritten one", 1),
        ("seven 7", 7),
        ("a 3 or a 4", -1),
        ("a dog", -1),
    ],
)
def test_named_digit(text, digit):
    assert C.named_digit(text) == digit
