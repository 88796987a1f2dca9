r"""Captions of ``digits`` made from the labels, and the character tokenizer they are read with.

Each class has several phrasings (``"a handwritten seven"``, ``"the digit 7"``, ``"seven"``,
...). :data:`TRAIN_TEMPLATES` are seen in training; :data:`HELD_OUT_TEMPLATES` never are, and
the text families report them separately (zero-shot prompts, latent diffusion's prompt accuracy).
A caption is tokenized character by character over :data:`ALPHABET`, with no learned vocabulary
and no downloaded weights:

.. math::
   \text{tokens} = (\text{BOS}, c_1, \dots, c_n, \text{EOS}, \text{PAD}, \dots),
   \qquad \text{length} = n + 2 \le \text{MAX\_LENGTH}.

:func:`draw_captions` is pure JAX (a lookup in a table of tokenized phrasings), so a loss can
draw a fresh phrasing per example from the step's key inside ``jit``.

Derivation: derivations/23-contrastive.md
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ALPHABET",
    "BOS",
    "EOS",
    "HELD_OUT_TEMPLATES",
    "MAX_LENGTH",
    "NUMBER_WORDS",
    "PAD",
    "SPLITS",
    "TRAIN_TEMPLATES",
    "VOCAB_SIZE",
    "caption_table",
    "detokenize",
    "draw_captions",
    "named_digit",
    "phrasings",
    "tokenize",
]

ALPHABET = " abcdefghijklmnopqrstuvwxyz0123456789"  #: the characters a caption may hold
PAD, BOS, EOS = 0, 1, 2  #: special tokens; character ``ALPHABET[i]`` is token ``i + 3``
VOCAB_SIZE = 3 + len(ALPHABET)
MAX_LENGTH = 32  #: tokens per caption, BOS and EOS included
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: phrasings seen in training; ``{d}`` is the numeral, ``{word}`` the number word, ``{a}`` the
#: indefinite article before either (``an`` for eight and 8 alone)
TRAIN_TEMPLATES = (
    "{word}",
    "{d}",
    "the digit {d}",
    "the digit {word}",
    "a handwritten {word}",
    "the number {word}",
    "{a} {word}",
    "an image of {a} {word}",
)
#: phrasings never seen in training
HELD_OUT_TEMPLATES = (
    "{a} {d} written by hand",
    "a picture of the number {d}",
    "this is {a} {word}",
)
SPLITS = {"train": TRAIN_TEMPLATES, "held_out": HELD_OUT_TEMPLATES}  #: the template sets


def _check_split(split: str) -> tuple[str, ...]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return SPLITS[split]


def phrasings(label: int, split: str = "train") -> list[str]:
    """The captions of digit ``label`` (0-9) in ``split`` (``"train"`` or ``"held_out"``),
    one per template, in template order.

    Derivation: derivations/23-contrastive.md
    """
    templates = _check_split(split)
    if not isinstance(label, (int, np.integer)) or not 0 <= label <= 9:
        raise ValueError(f"label must be an integer digit in [0, 9], got {label!r}")
    word = NUMBER_WORDS[label]
    article = "an" if label == 8 else "a"
    return [t.format(d=label, word=word, a=article) for t in templates]


def tokenize(texts: list[str] | tuple[str, ...], max_length: int = MAX_LENGTH):
    """Token ids and lengths of ``texts``: ``BOS``, one token per character, ``EOS``, then
    ``PAD`` up to ``max_length``.

    Args:
      texts: strings over :data:`ALPHABET` (lower case, digits, spaces).
      max_length: tokens per row, BOS and EOS included.

    Returns:
      ``(tokens [N, max_length] int32, lengths [N] int32)``, ``lengths`` counting BOS and EOS.

    Raises:
      ValueError: a text holds a character outside :data:`ALPHABET`, or is longer than
        ``max_length - 2`` characters.

    Derivation: derivations/23-contrastive.md
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got a single str")
    tokens = np.full((len(texts), max_length), PAD, np.int32)
    lengths = np.zeros(len(texts), np.int32)
    for i, text in enumerate(texts):
        bad = sorted(set(text) - set(ALPHABET))
        if bad:
            raise ValueError(f"texts[{i}] = {text!r} holds characters outside ALPHABET: {bad}")
        if len(text) > max_length - 2:
            raise ValueError(
                f"texts[{i}] = {text!r} has {len(text)} characters; at most "
                f"max_length - 2 = {max_length - 2} fit"
            )
        ids = [BOS, *(ALPHABET.index(c) + 3 for c in text), EOS]
        tokens[i, : len(ids)], lengths[i] = ids, len(ids)
    return tokens, lengths


def detokenize(tokens) -> list[str]:
    """The strings of token rows ``[N, L]``: the characters after a leading ``BOS`` up to the
    first ``EOS`` or ``PAD`` (other special tokens are dropped).

    Derivation: derivations/23-contrastive.md
    """
    out = []
    for row in np.asarray(tokens):
        chars = []
        for token in row[1:] if len(row) and row[0] == BOS else row:
            if token in (EOS, PAD):
                break
            if token > EOS:
                chars.append(ALPHABET[token - 3])
        out.append("".join(chars))
    return out


@functools.cache
def caption_table(split: str = "train", max_length: int = MAX_LENGTH):
    """Every phrasing of every class in ``split``, tokenized.

    Returns:
      ``(tokens [10, P, max_length], lengths [10, P])`` int32 numpy arrays, ``P`` the number of
      templates of ``split``; row ``c`` holds :func:`phrasings` ``(c, split)``.

    Derivation: derivations/23-contrastive.md
    """
    rows = [tokenize(phrasings(c, split), max_length) for c in range(10)]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def draw_captions(key: jax.Array, labels: jax.Array, split: str = "train"):
    """A caption of each label, its phrasing drawn uniformly from ``split``'s templates.

    Args:
      key: PRNG key.
      labels: ``[B]`` integer digits.
      split: ``"train"`` or ``"held_out"``.

    Returns:
      ``(tokens [B, MAX_LENGTH], lengths [B])``; traceable under ``jit``.

    Derivation: derivations/23-contrastive.md
    """
    tokens, lengths = caption_table(split)
    labels = jnp.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape [batch], got {labels.shape}")
    which = jax.random.randint(key, labels.shape, 0, tokens.shape[1])  # [B]
    return jnp.asarray(tokens)[labels, which], jnp.asarray(lengths)[labels, which]


_NAMES = {**{w: i for i, w in enumerate(NUMBER_WORDS)}, **{str(i): i for i in range(10)}}


def named_digit(text: str) -> int:
    """The digit a caption names (a numeral or a number word), or ``-1`` if it names none or
    more than one distinct digit.

    Derivation: derivations/23-contrastive.md
    """
    named = {_NAMES[w] for w in re.findall(r"[a-z]+|[0-9]", text) if w in _NAMES}
    return named.pop() if len(named) == 1 else -1
