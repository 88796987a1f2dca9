r"""Transformer recipes: a character language model and a sequence-to-sequence reversal.

* ``transformer_char_lm``: a decoder-only Transformer
  (:class:`genjax.nn.transformer.DecoderOnlyTransformer`) on the English text of Python's own
  help topics (``pydoc_data.topics``, shipped with CPython: 79 topics, ~465k characters).
  Metric: held-out bits per character; baselines on the same held-out characters: a unigram
  and an add-:math:`\alpha` bigram model fitted on the training split.
* ``transformer_reverse``: an encoder–decoder
  (:class:`genjax.nn.transformer.EncoderDecoderTransformer`) that reverses digit strings of
  random length; metric: exact-match accuracy of greedy decoding on a fixed test set; baseline:
  copying the input (right exactly on palindromes).

Data: the character model reads the ``pydoc_topics`` text data set
(:func:`genjax.data.load_text`: every fifth topic held out, a fixed alphabet); the reversal
names ``digit_strings`` (:func:`genjax.data.digit_strings`). Both losses draw their own batch
from the step's key (random windows of the training text, or fresh random digit strings); the
loop's batch only sets the batch size (``Recipe(draws_batches=True)``), so every batch is still
a function of the step number and runs resume exactly.

Derivation: derivations/03-attention.md, derivations/04-positional-encoding.md
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genjax import viz
from genjax.data import (
    DIGIT_STRING_BOS,
    DIGIT_STRING_EOS,
    DIGIT_STRING_PAD,
    Dataset,
    digit_strings,
)
from genjax.nn.transformer import (
    DecoderOnlyTransformer,
    EncoderDecoderTransformer,
    generate,
    token_nll,
)
from genjax.recipes import Option, Recipe, Report, register
from genjax.recipes.common import fast_init_key
from genjax.train import Task, TrainConfig

__all__ = [
    "CharLM",
    "Corpus",
    "Reverser",
    "bigram_log_probs",
    "held_out_windows",
    "make_char_task",
    "make_reverse_task",
    "ngram_bits_per_char",
    "random_windows",
    "unigram_log_probs",
]

BIGRAM_ALPHAS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # add-α grid, chosen on a validation slice
VALIDATION_FRACTION = 0.1  # last 10% of the training text chooses the bigram's α
LN2 = math.log(2.0)
CORPUS_NAME = "pydoc_topics"  # the text data set (genjax.data.load_text)


# ----------------------------------------------------------------------------- corpus


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The character corpus and its fixed split.

    Attributes:
      alphabet: the sorted characters; a character's id is its index.
      train: int32 ids of the training text.
      test: int32 ids of the held-out text.

    Derivation: derivations/03-attention.md
    """

    alphabet: str
    train: np.ndarray
    test: np.ndarray

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.alphabet)

    def decode(self, ids) -> str:
        """The text of character ``ids``."""
        return "".join(self.alphabet[int(i)] for i in np.ravel(ids))

    @classmethod
    def of(cls, dataset: Dataset) -> Corpus:
        """The corpus of a text :class:`~genjax.data.Dataset` (e.g. ``pydoc_topics``)."""
        if dataset is None or dataset.alphabet is None:
            name = None if dataset is None else dataset.name
            raise ValueError(
                f"the character model needs a text data set (pydoc_topics), got {name!r}"
            )
        return cls(dataset.alphabet, dataset.train["x"], dataset.test["x"])


def unigram_log_probs(train: np.ndarray, vocab_size: int) -> np.ndarray:
    r"""Add-one unigram: :math:`\log p(c) = \log\frac{n_c + 1}{N + V}`; ``[V]`` float64.

    Derivation: derivations/03-attention.md
    """
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    return np.log(counts / counts.sum())


def bigram_log_probs(train: np.ndarray, vocab_size: int, alpha: float) -> np.ndarray:
    r"""Add-:math:`\alpha` bigram: :math:`\log p(c \mid a) = \log\frac{n_{ac} + \alpha}
    {n_a + \alpha V}`; ``[V, V]`` float64 indexed ``[previous, next]``.

    Derivation: derivations/03-attention.md
    """
    counts = np.zeros((vocab_size, vocab_size))
    np.add.at(counts, (train[:-1], train[1:]), 1.0)
    counts += alpha
    return np.log(counts / counts.sum(axis=1, keepdims=True))


def ngram_bits_per_char(train: np.ndarray, test: np.ndarray, vocab_size: int):
    """Bits per character of the unigram and bigram baselines on ``test[1:]`` (each character
    predicted from the one before; the bigram's α is chosen on the last slice of ``train``).

    Returns ``(unigram_bits, bigram_bits, alpha)``.

    Derivation: derivations/03-attention.md
    """
    unigram = unigram_log_probs(train, vocab_size)
    split = int(len(train) * (1 - VALIDATION_FRACTION))
    fit, val = train[:split], train[split:]
    if len(val) < 2:
        raise ValueError(f"train is too short to hold out a validation bigram: {len(train)} ids")
    val_nll = {
        a: -bigram_log_probs(fit, vocab_size, a)[val[:-1], val[1:]].mean() for a in BIGRAM_ALPHAS
    }
    alpha = min(val_nll, key=val_nll.get)
    bigram = bigram_log_probs(train, vocab_size, alpha)
    return (
        float(-unigram[test[1:]].mean() / LN2),
        float(-bigram[test[:-1], test[1:]].mean() / LN2),
        alpha,
    )


def random_windows(key, ids: jax.Array, batch: int, length: int) -> jax.Array:
    """``batch`` windows of ``length`` consecutive ids at uniform random offsets: ``[batch,
    length]``.

    Derivation: derivations/03-attention.md
    """
    starts = jax.random.randint(key, (batch,), 0, ids.shape[0] - length + 1)  # [batch]
    return jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(ids, s, length))(starts)


def held_out_windows(ids: np.ndarray, context: int) -> np.ndarray:
    """Consecutive windows of ``context + 1`` ids overlapping by one, ``[n, context + 1]``: the
    model predicts ids ``1..context`` of each, so every id of ``ids[1 : 1 + n * context]`` is
    predicted once (the tail shorter than a window is dropped).

    Derivation: derivations/03-attention.md
    """
    n = (len(ids) - 1) // context
    starts = np.arange(n) * context
    return ids[starts[:, None] + np.arange(context + 1)[None, :]]  # [n, context + 1]


def _batch_size(batch: Mapping[str, jax.Array]) -> int:
    """The loop's batch only says how many examples to draw."""
    return jax.tree.leaves(batch)[0].shape[0]


# ----------------------------------------------------------------------------- character LM


@dataclasses.dataclass(frozen=True, eq=False)
class CharLM:
    """The character model's pieces: corpus, network, context length.

    Derivation: derivations/03-attention.md, derivations/04-positional-encoding.md
    """

    corpus: Corpus
    model: DecoderOnlyTransformer
    context: int

    def init(self, key, batch):
        """Parameters from an all-zero window (the batch only sets its size)."""
        tokens = jnp.zeros((1, self.context), jnp.int32)
        return jax.jit(self.model.init)(fast_init_key(key), tokens)

    def loss(self, params, key, batch):
        """Next-character NLL of random training windows drawn from ``key``."""
        k_data, k_drop = jax.random.split(key)
        windows = random_windows(
            k_data, jnp.asarray(self.corpus.train), _batch_size(batch), self.context + 1
        )  # [B, context + 1]
        logits = self.model.apply(
            params, windows[:, :-1], deterministic=False, rngs={"dropout": k_drop}
        )  # [B, context, V]
        nll = token_nll(logits, windows[:, 1:])  # [B, context]
        return jnp.mean(nll), {"bits_per_char": jnp.mean(nll) / LN2}

    @functools.cached_property
    def _nll(self):
        """Jitted ``(params, windows [n, context + 1]) -> nll [n, context]`` (compiled once)."""
        return jax.jit(lambda params, w: token_nll(self.model.apply(params, w[:, :-1]), w[:, 1:]))

    @functools.cached_property
    def _sampler(self):
        """Jitted ``(params, key, n) -> ids [n, context]`` (compiled once per ``n``)."""

        def sample(params, key, n):
            prompt = jnp.full((n, 1), self.corpus.alphabet.index("\n"), jnp.int32)  # [n, 1]
            logits_fn = lambda tokens: self.model.apply(params, tokens)
            return generate(key, logits_fn, prompt, self.context - 1)

        return jax.jit(sample, static_argnums=2)

    def test_bits_by_position(self, params, batch_size: int = 512) -> np.ndarray:
        """Held-out bits for every predicted character, ``[windows, context]``."""
        windows = held_out_windows(self.corpus.test, self.context)
        out = [
            np.asarray(self._nll(params, windows[i : i + batch_size]))
            for i in range(0, len(windows), batch_size)
        ]
        return np.concatenate(out) / LN2

    def sample(self, params, key, n: int) -> jax.Array:
        """``n`` texts of ``context`` ids, each started from a newline, temperature 1."""
        return self._sampler(params, key, n)


CHAR_DEFAULTS = {
    "context": 32,
    "features": 64,
    "num_layers": 1,
    "num_heads": 4,
    "positional": "learned",
    "dropout": 0.0,
}


def make_char_task(dataset: Dataset, options: Mapping[str, Any]) -> Task:
    """The character model's :class:`Task` on the text data set ``dataset`` (``pydoc_topics``).

    Options: ``context``, ``features``, ``num_layers``, ``num_heads``, ``positional``,
    ``dropout``.

    Derivation: derivations/03-attention.md, derivations/04-positional-encoding.md
    """
    opts = {**CHAR_DEFAULTS, **options}
    corpus = Corpus.of(dataset)
    model = DecoderOnlyTransformer(
        vocab_size=corpus.vocab_size,
        max_length=int(opts["context"]),
        features=int(opts["features"]),
        num_layers=int(opts["num_layers"]),
        num_heads=int(opts["num_heads"]),
        dropout_rate=float(opts["dropout"]),
        positional=str(opts["positional"]),
    )
    lm = CharLM(corpus, model, int(opts["context"]))
    return Task(init=lm.init, loss=lm.loss, sample=lm.sample, model=lm)


def _char_config(quick: bool) -> TrainConfig:
    if quick:  # beats the bigram already
        return TrainConfig(
            steps=200, batch_size=32, lr=4e-3, warmup_steps=20, ema_decay=None, log_every=100
        )
    return TrainConfig(
        steps=3000, batch_size=64, lr=2e-3, warmup_steps=100, ema_decay=None, log_every=100
    )


def _evaluate_char(task: Task, params, dataset: Dataset, key) -> Report:
    lm: CharLM = task.model
    bits = lm.test_bits_by_position(params)
    predicted = lm.corpus.test[: bits.size + 1]  # the same characters for the baselines
    unigram, bigram, alpha = ngram_bits_per_char(lm.corpus.train, predicted, lm.corpus.vocab_size)
    return Report(
        metric=f"held-out bits per character, {CORPUS_NAME}",
        value=float(bits.mean()),
        baseline=f"bigram (add-{alpha:g}) on the same characters",
        baseline_value=bigram,
        extra={
            "unigram_bits_per_char": unigram,
            "test_characters": float(bits.size),
            "bits_per_char_second_half_of_window": float(bits[:, bits.shape[1] // 2 :].mean()),
        },
    )


def _char_figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    """Held-out bits per character against the context available (position in the window),
    beside the n-gram baselines; a text sample is written to ``char_lm_sample.txt``."""
    lm: CharLM = task.model
    bits = lm.test_bits_by_position(params)
    predicted = lm.corpus.test[: bits.size + 1]
    unigram, bigram, _ = ngram_bits_per_char(lm.corpus.train, predicted, lm.corpus.vocab_size)
    path = viz.line_plot(
        np.arange(1, bits.shape[1] + 1),
        {"transformer": bits.mean(0)},
        out_dir / "char_lm_bits_by_context.png",
        levels={"bigram": bigram, "unigram": unigram},
        xlabel="characters of context",
        ylabel="held-out bits per character",
        title=f"pydoc topics: {bits.mean():.3f} bits/char (bigram {bigram:.3f})",
    )
    samples = np.asarray(lm.sample(params, key, 4))
    text = "\n----\n".join(lm.corpus.decode(s) for s in samples)
    (out_dir / "char_lm_sample.txt").write_text(text + "\n")
    return [path]


# ----------------------------------------------------------------------------- reversal

DIGITS = 10
PAD, BOS, EOS = DIGIT_STRING_PAD, DIGIT_STRING_BOS, DIGIT_STRING_EOS
TEST_SEED = 20_251_125
TEST_SIZE = 1000


@dataclasses.dataclass(frozen=True, eq=False)
class Reverser:
    """The reversal task's pieces.

    Derivation: derivations/03-attention.md, derivations/04-positional-encoding.md
    """

    model: EncoderDecoderTransformer
    max_len: int

    def init(self, key, batch):
        """Parameters from all-zero strings (the batch only sets its size)."""
        src = jnp.zeros((1, self.max_len), jnp.int32)
        tgt = jnp.zeros((1, self.max_len + 1), jnp.int32)
        return jax.jit(self.model.init)(fast_init_key(key), src, jnp.ones((1,), jnp.int32), tgt)

    def loss(self, params, key, batch):
        """Teacher-forced NLL of fresh digit strings drawn from ``key``, per string."""
        k_data, k_drop = jax.random.split(key)
        src, lengths, tgt_in, tgt_out = digit_strings(k_data, _batch_size(batch), self.max_len)
        logits = self.model.apply(
            params, src, lengths, tgt_in, deterministic=False, rngs={"dropout": k_drop}
        )  # [B, max_len + 1, V]
        weights = jnp.arange(self.max_len + 1)[None, :] <= lengths[:, None]  # digits and EOS
        nll = jnp.sum(token_nll(logits, tgt_out) * weights, 1) / jnp.sum(weights, 1)  # [B]
        return jnp.mean(nll), {}

    @functools.cached_property
    def translate(self):
        """Jitted greedy decoding ``(params, src, lengths) -> [n, max_len + 1]`` ids after BOS."""

        def translate(params, src, lengths):
            memory = self.model.apply(params, src, lengths, method="encode")
            logits_fn = lambda tgt: self.model.apply(params, tgt, memory, lengths, method="decode")
            prompt = jnp.full((src.shape[0], 1), BOS, jnp.int32)  # [n, 1]
            out = generate(jax.random.key(0), logits_fn, prompt, self.max_len + 1, temperature=0)
            return out[:, 1:]  # [n, max_len + 1]

        return jax.jit(translate)

    def exact_match(self, params, n: int = TEST_SIZE) -> tuple[float, float, float]:
        """(model exact match, copy-baseline exact match, teacher-forced token accuracy) on the
        fixed test strings.

        Greedy decoding reproduces a target exactly iff every teacher-forced argmax is right:
        if all are, each greedy step sees the true prefix and picks the true token; if greedy
        decoding is right, its prefixes were the true ones, so the teacher-forced argmaxes are
        the greedy picks. One teacher-forced pass thus gives the greedy exact-match accuracy
        (tests/test_transformer.py::test_greedy_exact_match_equals_teacher_forced).
        """
        return tuple(float(v) for v in self._scores(params, n))

    @functools.partial(jax.jit, static_argnums=(0, 2))
    def _scores(self, params, n):
        src, lengths, tgt_in, tgt_out = digit_strings(jax.random.key(TEST_SEED), n, self.max_len)
        pred = jnp.argmax(self.model.apply(params, src, lengths, tgt_in), -1)  # [n, max_len + 1]
        valid = jnp.arange(self.max_len + 1)[None, :] <= lengths[:, None]  # digits and EOS
        copy = jnp.concatenate([src, jnp.full((n, 1), PAD)], 1)  # [n, max_len + 1]
        copy = jnp.where(jnp.arange(self.max_len + 1)[None, :] == lengths[:, None], EOS, copy)
        exact = lambda guess: jnp.mean(jnp.all((guess == tgt_out) | ~valid, 1))
        token_acc = jnp.sum((pred == tgt_out) & valid) / jnp.sum(valid)
        return exact(pred), exact(copy), token_acc

    def sample(self, params, key, n: int) -> jax.Array:
        """int32 ``[n, 2, max_len + 1]``: row 0 a random source (PAD-padded), row 1 the
        model's greedy output (digits, EOS, then anything)."""
        src, lengths, _, _ = digit_strings(key, n, self.max_len)
        pred = self.translate(params, src, lengths)  # [n, max_len + 1]
        src = jnp.concatenate([src, jnp.full((n, 1), PAD)], 1)  # [n, max_len + 1]
        return jnp.stack([src, pred], 1)  # [n, 2, max_len + 1]


REVERSE_DEFAULTS = {
    "max_len": 8,
    "features": 64,
    "num_layers": 1,
    "num_heads": 4,
    "positional": "sinusoidal",
    "dropout": 0.0,
}


def make_reverse_task(dataset: Dataset, options: Mapping[str, Any]) -> Task:
    """The reversal :class:`Task`: strings of :func:`genjax.data.digit_strings`, drawn afresh
    by the loss (``dataset`` only names them). Options: ``max_len``, ``features``,
    ``num_layers``, ``num_heads``, ``positional``, ``dropout``.

    Derivation: derivations/03-attention.md, derivations/04-positional-encoding.md
    """
    opts = {**REVERSE_DEFAULTS, **options}
    max_len = int(opts["max_len"])
    model = EncoderDecoderTransformer(
        src_vocab=DIGITS + 1,
        tgt_vocab=DIGITS + 3,
        max_length=max_len + 1,
        features=int(opts["features"]),
        num_layers=int(opts["num_layers"]),
        num_heads=int(opts["num_heads"]),
        dropout_rate=float(opts["dropout"]),
        positional=str(opts["positional"]),
    )
    reverser = Reverser(model, max_len)
    return Task(init=reverser.init, loss=reverser.loss, sample=reverser.sample, model=reverser)


def _reverse_config(quick: bool) -> TrainConfig:
    if quick:
        return TrainConfig(
            steps=300, batch_size=64, lr=3e-3, warmup_steps=30, ema_decay=None, log_every=100
        )
    return TrainConfig(
        steps=2000, batch_size=128, lr=2e-3, warmup_steps=100, ema_decay=None, log_every=100
    )


def _evaluate_reverse(task: Task, params, dataset: Dataset, key) -> Report:
    accuracy, copy, token_acc = task.model.exact_match(params)
    return Report(
        metric=f"exact-match accuracy on {TEST_SIZE} generated held-out digit strings",
        value=accuracy,
        baseline="copy the input (right on palindromes)",
        baseline_value=copy,
        lower_is_better=False,
        extra={"teacher_forced_token_accuracy": token_acc},
    )


register(
    Recipe(
        name="transformer_char_lm",
        summary=(
            f"decoder-only character Transformer on {CORPUS_NAME}; held-out bits/char vs "
            "unigram and bigram"
        ),
        make_task=make_char_task,
        config=_char_config,
        evaluate=_evaluate_char,
        figures=_char_figures,
        data=CORPUS_NAME,
        draws_batches=True,
        quick_tour=True,
        tour_steps=500,
        options={**CHAR_DEFAULTS, "dropout": Option(0.0, high=1.0)},
    )
)
register(
    Recipe(
        name="transformer_reverse",
        summary="encoder-decoder Transformer reversing digit strings; exact match vs copying",
        make_task=make_reverse_task,
        config=_reverse_config,
        evaluate=_evaluate_reverse,
        data="digit_strings",
        draws_batches=True,
        options={**REVERSE_DEFAULTS, "dropout": Option(0.0, high=1.0)},
    )
)
