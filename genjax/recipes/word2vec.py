r"""Word2vec recipe: skip-gram with negative sampling on Python's help topics.

Data: the ``pydoc_topics`` text data set (:func:`genjax.data.load_text`, shipped with CPython:
every fifth topic in sorted order is held out, the split the character language model uses).
Words are lower-case ASCII letter runs
(:func:`genjax.word2vec.tokenize`); the vocabulary is the training words seen at least
``min_count`` times, other words are dropped from both streams before pairing (as the reference
code does). Training pairs are every (centre, context) pair within ``window`` of the training
stream (:func:`genjax.word2vec.skipgram_pairs`), optionally after frequent-word subsampling.

The loss draws its own pairs and negatives from the step's key (the loop's batch only sets the
batch size, ``Recipe(draws_batches=True)``), so a run is still a function of the step number
and resumes exactly.

Metric: held-out cross-entropy of the context word given the centre word, in nats per pair,
under the normalised distribution the model implies,
:math:`p(o \mid c) \propto P_n(o) \exp(u_o^\top v_c)` (:func:`genjax.word2vec.context_log_probs`),
over every held-out pair. Baseline on the same pairs: the add-one unigram of training context
words, the best predictor that ignores the centre word. Extra figures: the held-out
negative-sampling loss itself (fixed negatives) beside that of the unigram scorer
:math:`s(o) = \log\frac{P(o)}{K P_n(o)}`, the centre-independent optimum of the same loss.

Derivation: derivations/16-word2vec.md
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genjax import viz
from genjax import word2vec as w2v
from genjax.data import Dataset
from genjax.recipes import Recipe, Report, register
from genjax.train import Task, TrainConfig

__all__ = ["Corpus", "SkipGramTask", "load_corpus", "make_task"]

DEFAULTS = {
    "dim": 64,
    "window": 3,
    "negatives": 5,
    "min_count": 5,
    "power": 0.75,
    "subsample": 0.0,  # threshold t; 0 turns subsampling off
}
QUERY_WORDS = ("list", "true", "class", "string", "exception", "loop", "integer", "file")
EVAL_SEED = 2013
EVAL_BATCH = 4096


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The word streams and their split.

    Attributes:
      vocab: training vocabulary (:class:`genjax.word2vec.Vocab`).
      train: int32 ids of the training stream (words outside the vocabulary dropped).
      test: int32 ids of the held-out stream, the same way.

    Derivation: derivations/16-word2vec.md
    """

    vocab: w2v.Vocab
    train: np.ndarray
    test: np.ndarray


def load_corpus(dataset: Dataset, min_count: int = 5) -> Corpus:
    """The words of a text data set (``pydoc_topics``) as ids of its training vocabulary.

    Derivation: derivations/16-word2vec.md
    """
    if dataset is None or dataset.alphabet is None:
        name = None if dataset is None else dataset.name
        raise ValueError(f"word2vec needs a text data set (pydoc_topics), got {name!r}")
    return _corpus(dataset.name, dataset.text("train"), dataset.text("test"), min_count)


@functools.cache
def _corpus(name: str, train: str, test: str, min_count: int) -> Corpus:
    train_tokens, test_tokens = w2v.tokenize(train), w2v.tokenize(test)
    vocab = w2v.build_vocab(train_tokens, min_count)
    return Corpus(vocab, vocab.encode(train_tokens), vocab.encode(test_tokens))


def _batch_size(batch: Mapping[str, jax.Array]) -> int:
    return jax.tree.leaves(batch)[0].shape[0]


@dataclasses.dataclass(frozen=True, eq=False)
class SkipGramTask:
    """The recipe's pieces: corpus, model, training pairs, noise distribution.

    Derivation: derivations/16-word2vec.md
    """

    corpus: Corpus
    model: w2v.SkipGram
    pairs: np.ndarray  # [P, 2] training (centre, context)
    noise: np.ndarray  # [V] P_n
    negatives: int
    window: int

    def init(self, key, batch):
        """The embedding tables (the batch only sets its size)."""
        ids = jnp.zeros((1,), jnp.int32)
        return self.model.init(key, ids, ids, jnp.zeros((1, self.negatives), jnp.int32))

    def loss(self, params, key, batch):
        """Negative-sampling loss of random training pairs and negatives drawn from ``key``."""
        k_pair, k_neg = jax.random.split(key)
        n = _batch_size(batch)
        idx = jax.random.randint(k_pair, (n,), 0, self.pairs.shape[0])
        pairs = jnp.asarray(self.pairs)[idx]  # [B, 2]
        negs = w2v.sample_negatives(k_neg, self.noise, (n, self.negatives))  # [B, K]
        per_pair = self.model.apply(params, pairs[:, 0], pairs[:, 1], negs)  # [B]
        return jnp.mean(per_pair), {}

    @functools.cached_property
    def test_pairs(self) -> np.ndarray:
        """``[P, 2]`` held-out (centre, context) pairs."""
        return w2v.skipgram_pairs(self.corpus.test, self.window)

    def unigram_log_probs(self) -> np.ndarray:
        """Add-one unigram of the training context words, float64 ``[V]``."""
        counts = np.bincount(self.pairs[:, 1], minlength=len(self.corpus.vocab)) + 1.0
        return np.log(counts / counts.sum())

    def held_out_cross_entropy(self, params) -> float:
        """Mean :math:`-\\log p(o \\mid c)` over the held-out pairs, nats."""
        table = params["params"]
        log_prior = jnp.log(jnp.asarray(self.noise))

        @jax.jit
        def nll(pairs):
            logp = w2v.context_log_probs(table["center"][pairs[:, 0]], table["context"], log_prior)
            return -jnp.take_along_axis(logp, pairs[:, 1:], axis=1)[:, 0]  # [n]

        pairs = self.test_pairs
        out = [np.asarray(nll(pairs[i : i + EVAL_BATCH])) for i in range(0, len(pairs), EVAL_BATCH)]
        return float(np.concatenate(out).mean())

    def held_out_ns_loss(self, params) -> tuple[float, float]:
        """Held-out negative-sampling loss with fixed negatives: (model, unigram scorer)."""
        pairs = jnp.asarray(self.test_pairs)
        negs = w2v.sample_negatives(
            jax.random.key(EVAL_SEED), self.noise, (pairs.shape[0], self.negatives)
        )
        model = self.model.apply(params, pairs[:, 0], pairs[:, 1], negs)
        # centre-independent optimum: s(o) = log P(o) - log K - log P_n(o), as a 1-d "vector"
        score = jnp.asarray(
            self.unigram_log_probs() - np.log(self.negatives) - np.log(self.noise), jnp.float32
        )
        ones = jnp.ones((pairs.shape[0], 1))
        unigram = w2v.negative_sampling_loss(
            ones, score[pairs[:, 1]][:, None], score[negs][..., None]
        )
        return float(model.mean()), float(unigram.mean())

    def neighbours(self, params, words=QUERY_WORDS, k: int = 5) -> dict[str, list[str]]:
        """The ``k`` nearest words (cosine, centre vectors) of each query word in the vocab."""
        index = self.corpus.vocab.index
        words = [w for w in words if w in index]
        ids, _ = w2v.nearest_neighbours(
            params["params"]["center"], jnp.array([index[w] for w in words]), k
        )
        vocab = self.corpus.vocab.words
        return {
            w: [vocab[int(i)] for i in row] for w, row in zip(words, np.asarray(ids), strict=True)
        }


def make_task(dataset: Dataset, options: Mapping[str, Any]) -> Task:
    """The skip-gram :class:`Task` on the text data set ``dataset`` (``pydoc_topics``).

    Options: ``dim``, ``window``, ``negatives``, ``min_count``, ``power`` (noise exponent),
    ``subsample`` (threshold; 0 = off).

    Derivation: derivations/16-word2vec.md
    """
    opts = {**DEFAULTS, **options}
    corpus = load_corpus(dataset, int(opts["min_count"]))
    vocab = corpus.vocab
    train_ids = corpus.train
    threshold = float(opts["subsample"])
    if threshold > 0:
        freqs = jnp.asarray(vocab.counts / vocab.counts.sum(), jnp.float32)
        discard = w2v.subsample_probability(freqs, threshold)
        train_ids = w2v.subsample(jax.random.key(EVAL_SEED), train_ids, discard)
    window = int(opts["window"])
    sg = SkipGramTask(
        corpus=corpus,
        model=w2v.SkipGram(len(vocab), int(opts["dim"])),
        pairs=w2v.skipgram_pairs(train_ids, window),
        noise=np.asarray(w2v.noise_distribution(vocab.counts, float(opts["power"]))),
        negatives=int(opts["negatives"]),
        window=window,
    )
    return Task(init=sg.init, loss=sg.loss, model=sg)


def _config(quick: bool) -> TrainConfig:
    """3000 steps (quick: 1000) of 512 pairs, Adam 1e-2 with warm-up and cosine decay."""
    steps = 1000 if quick else 3000
    return TrainConfig(steps, 512, 1e-2, warmup_steps=50, ema_decay=None, clip_norm=None)


def _evaluate(task: Task, params, dataset: Dataset, key) -> Report:
    del dataset, key
    sg: SkipGramTask = task.model
    value = sg.held_out_cross_entropy(params)
    unigram = float(-sg.unigram_log_probs()[sg.test_pairs[:, 1]].mean())
    ns_model, ns_unigram = sg.held_out_ns_loss(params)
    return Report(
        metric="held-out context cross-entropy, nats/pair",
        value=value,
        baseline="unigram of training contexts (add-one)",
        baseline_value=unigram,
        extra={
            "held_out_ns_loss": ns_model,
            "held_out_ns_loss_unigram_scorer": ns_unigram,
            "held_out_pairs": float(len(sg.test_pairs)),
            "vocab_size": float(len(sg.corpus.vocab)),
        },
    )


def _figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    """Nearest neighbours of a few words (``neighbours.txt``) and a 2-D PCA map of the 60 most
    frequent words' centre vectors (``word_map.png``)."""
    del dataset, key
    sg: SkipGramTask = task.model
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"{w}: {', '.join(n)}" for w, n in sg.neighbours(params).items()]
    (out_dir / "neighbours.txt").write_text("\n".join(lines) + "\n")
    vectors = np.asarray(params["params"]["center"][:60])
    vectors = vectors - vectors.mean(0)
    _, _, vt = np.linalg.svd(vectors, full_matrices=False)
    title = "skip-gram centre vectors, 60 most frequent words (PCA)"
    path = viz.labelled_scatter(
        vectors @ vt[:2].T, sg.corpus.vocab.words[:60], out_dir / "word_map.png", title
    )
    return [path]


register(
    Recipe(
        name="word2vec",
        summary="skip-gram with negative sampling on pydoc topics, vs a unigram context model",
        make_task=make_task,
        config=_config,
        evaluate=_evaluate,
        figures=_figures,
        data="pydoc_topics",
        draws_batches=True,
        options=DEFAULTS,
        tour_steps=3000,
    )
)
