r"""Skip-gram word vectors with negative sampling, and the triplet loss.

Each word :math:`w` has a *centre* vector :math:`v_w` and a *context* vector :math:`u_w`. The
full skip-gram model is a softmax over the vocabulary,
:math:`p(o \mid c) = \exp(u_o^\top v_c) / \sum_w \exp(u_w^\top v_c)`; negative sampling replaces
it with :math:`1 + K` binary logistic problems: the observed pair :math:`(c, o)` against
:math:`K` words drawn from a noise distribution :math:`P_n`. The pieces:

* :func:`negative_sampling_loss` — :math:`-\log\sigma(u_o^\top v_c) -
  \sum_k \log\sigma(-u_k^\top v_c)`, per pair;
* :func:`noise_distribution` — :math:`P_n(w) \propto \mathrm{count}(w)^{0.75}`;
* :func:`subsample_probability` — Mikolov's discard probability
  :math:`1 - \sqrt{t / f(w)}` for frequent words;
* :func:`skipgram_pairs` — every (centre, context) pair within a window, vectorised;
* :class:`SkipGram` — the two embedding tables and the loss;
* :func:`context_log_probs` — the normalised :math:`p(o \mid c)` a trained model implies, used
  for held-out evaluation;
* :func:`cosine_similarity`, :func:`nearest_neighbours` — reading the vectors;
* :func:`triplet_loss` — the metric-learning relative (anchor, positive, negative, margin).

Word lists: :func:`tokenize` (lower-case ASCII words) and :func:`build_vocab`.

Derivation: derivations/16-word2vec.md
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from genjax import _checks

__all__ = [
    "SkipGram",
    "Vocab",
    "build_vocab",
    "context_log_probs",
    "cosine_similarity",
    "nearest_neighbours",
    "negative_sampling_loss",
    "noise_distribution",
    "sample_negatives",
    "skipgram_pairs",
    "subsample",
    "subsample_probability",
    "tokenize",
    "triplet_loss",
]

_WORD = re.compile(r"[a-z]+")


# ----------------------------------------------------------------------------- losses


def negative_sampling_loss(
    center: Float[Array, "*batch d"],
    context: Float[Array, "*batch d"],
    negatives: Float[Array, "*batch k d"],
) -> Float[Array, "*batch"]:
    r"""Skip-gram negative-sampling loss of one observed pair against :math:`K` noise words.

    .. math::
       \ell(c, o) = -\log\sigma(u_o^\top v_c) - \sum_{k=1}^{K} \log\sigma(-u_k^\top v_c)
                  = \operatorname{softplus}(-u_o^\top v_c)
                    + \sum_k \operatorname{softplus}(u_k^\top v_c)

    with gradient :math:`\partial\ell/\partial v_c = (\sigma(u_o^\top v_c) - 1)\,u_o +
    \sum_k \sigma(u_k^\top v_c)\,u_k`.

    Args:
      center: centre-word vectors :math:`v_c`, ``[*batch, d]``.
      context: observed context-word vectors :math:`u_o`, ``[*batch, d]``.
      negatives: noise-word context vectors :math:`u_k`, ``[*batch, K, d]``.

    Returns:
      The loss per pair, ``[*batch]`` (nats; sum over the :math:`K` negatives, not a mean).

    References:
      Mikolov et al., *Distributed Representations of Words and Phrases and their
      Compositionality*, 2013, https://arxiv.org/abs/1310.4546

    Derivation: derivations/16-word2vec.md
    """
    center, context, negatives = (jnp.asarray(a) for a in (center, context, negatives))
    _checks.same_shape(center=center, context=context)
    if center.ndim < 1:
        raise ValueError(f"center must have shape [*batch, d], got {center.shape}")
    if negatives.shape[:-2] != center.shape[:-1] or negatives.shape[-1:] != center.shape[-1:]:
        raise ValueError(
            f"negatives must have shape [*batch, K, d] with *batch = {center.shape[:-1]} and "
            f"d = {center.shape[-1]}, got {negatives.shape}"
        )
    positive = jnp.sum(context * center, axis=-1)  # [*batch]
    negative = jnp.einsum("...kd,...d->...k", negatives, center)  # [*batch, K]
    return jax.nn.softplus(-positive) + jnp.sum(jax.nn.softplus(negative), axis=-1)


def triplet_loss(
    anchor: Float[Array, "*batch d"],
    positive: Float[Array, "*batch d"],
    negative: Float[Array, "*batch d"],
    margin: float = 1.0,
    *,
    squared: bool = True,
) -> Float[Array, "*batch"]:
    r"""Triplet (margin) loss: the positive must be closer to the anchor than the negative.

    .. math::
       \ell(a, p, n) = \max\big(0,\; d(a, p) - d(a, n) + m\big), \qquad
       d(x, y) = \lVert x - y\rVert_2^2 \ (\texttt{squared}) \text{ or } \lVert x - y\rVert_2

    Args:
      anchor, positive, negative: embeddings, ``[*batch, d]`` each.
      margin: :math:`m \ge 0`.
      squared: squared Euclidean distance (FaceNet's choice) or the plain distance.

    Returns:
      The loss per triplet, ``[*batch]``; zero once :math:`d(a,n) \ge d(a,p) + m`.

    References:
      Schroff et al., *FaceNet: A Unified Embedding for Face Recognition and Clustering*, 2015,
      https://arxiv.org/abs/1503.03832

    Derivation: derivations/16-word2vec.md
    """
    anchor, positive, negative = (jnp.asarray(a) for a in (anchor, positive, negative))
    _checks.same_shape(anchor=anchor, positive=positive, negative=negative)
    if anchor.ndim < 1:
        raise ValueError(f"anchor must have shape [*batch, d], got {anchor.shape}")
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")

    def distance(x, y):
        sq = jnp.sum(jnp.square(x - y), axis=-1)
        return sq if squared else jnp.sqrt(sq + 1e-12)

    return jax.nn.relu(distance(anchor, positive) - distance(anchor, negative) + margin)


# ----------------------------------------------------------------------------- word statistics


def noise_distribution(counts: Float[Array, " v"], power: float = 0.75) -> Float[Array, " v"]:
    r"""The negative-sampling noise distribution, unigram counts raised to a power.

    .. math::
       P_n(w) = \frac{\mathrm{count}(w)^{\alpha}}{\sum_{w'} \mathrm{count}(w')^{\alpha}}

    :math:`\alpha = 1` is the unigram distribution, :math:`\alpha = 0` the uniform one; Mikolov
    et al. found :math:`\alpha = 3/4` best: it flattens the unigram, sampling rare words more
    often than their frequency. Words with count 0 get probability 0 (for :math:`\alpha > 0`).

    Args:
      counts: non-negative word counts, ``[V]`` with at least one positive entry.
      power: the exponent :math:`\alpha \ge 0`.

    Returns:
      Probabilities ``[V]`` (float32) summing to 1.

    References:
      Mikolov et al., *Distributed Representations of Words and Phrases and their
      Compositionality*, 2013, https://arxiv.org/abs/1310.4546

    Derivation: derivations/16-word2vec.md
    """
    counts = jnp.asarray(counts, jnp.float32)
    if counts.ndim != 1 or counts.shape[0] == 0:
        raise ValueError(f"counts must have shape [V] with V >= 1, got {counts.shape}")
    if not (np.isfinite(power) and power >= 0):
        raise ValueError(f"power must be a finite float >= 0, got {power}")
    if _checks.is_concrete(counts) and (bool(jnp.any(counts < 0)) or not bool(jnp.any(counts > 0))):
        raise ValueError("counts must be non-negative with at least one positive entry")
    weights = jnp.where(counts > 0, counts, 1.0) ** power
    weights = jnp.where(counts > 0, weights, 0.0 if power > 0 else 1.0)
    return weights / jnp.sum(weights)


def subsample_probability(freqs: Float[Array, " v"], threshold: float = 1e-5) -> Float[Array, " v"]:
    r"""Probability of *discarding* each occurrence of a word (Mikolov's frequent-word
    subsampling).

    .. math::
       P_{\mathrm{discard}}(w) = \max\Big(0,\; 1 - \sqrt{t / f(w)}\Big)

    where :math:`f(w)` is the word's relative frequency and :math:`t` the threshold: words rarer
    than :math:`t` are always kept, a word of frequency :math:`f \gg t` keeps a fraction
    :math:`\sqrt{t/f}` of its occurrences. (The released C code uses a slightly different
    expression, :math:`\sqrt{t/f} + t/f` kept; this is the paper's formula.)

    Args:
      freqs: relative frequencies in :math:`[0, 1]`, ``[V]`` (need not sum to 1 once rare words
        are dropped).
      threshold: :math:`t > 0`, typically :math:`10^{-5}` for billion-word corpora and larger
        (:math:`10^{-3}`) for small ones.

    Returns:
      Discard probabilities in :math:`[0, 1)`, ``[V]``; 0 for words with :math:`f \le t`.

    References:
      Mikolov et al., *Distributed Representations of Words and Phrases and their
      Compositionality*, 2013, https://arxiv.org/abs/1310.4546

    Derivation: derivations/16-word2vec.md
    """
    freqs = jnp.asarray(freqs, jnp.float32)
    if freqs.ndim != 1:
        raise ValueError(f"freqs must have shape [V], got {freqs.shape}")
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive finite float, got {threshold}")
    if _checks.is_concrete(freqs) and bool(jnp.any((freqs < 0) | (freqs > 1) | jnp.isnan(freqs))):
        raise ValueError("freqs must be relative frequencies in [0, 1]")
    safe = jnp.where(freqs > 0, freqs, 1.0)
    return jnp.where(freqs > threshold, 1.0 - jnp.sqrt(threshold / safe), 0.0)


# ----------------------------------------------------------------------------- text and pairs


def tokenize(text: str) -> list[str]:
    """Lower-case runs of ASCII letters: ``"Hello, world 2"`` → ``["hello", "world"]``.

    Derivation: derivations/16-word2vec.md
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _WORD.findall(text.lower())


@dataclasses.dataclass(frozen=True)
class Vocab:
    """Words kept for training and their training counts.

    Attributes:
      words: the kept words, most frequent first (ties alphabetical); a word's id is its index.
      counts: int64 ``[V]``, each word's count in the text the vocabulary was built from.

    Derivation: derivations/16-word2vec.md
    """

    words: tuple[str, ...]
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.words)

    @property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """Ids of the tokens that are in the vocabulary (others are dropped), int32 ``[n]``."""
        index = self.index
        return np.array([index[t] for t in tokens if t in index], np.int32)


def build_vocab(tokens: Sequence[str], min_count: int = 5) -> Vocab:
    """The words occurring at least ``min_count`` times, most frequent first.

    Derivation: derivations/16-word2vec.md
    """
    _checks.positive_int("min_count", min_count)
    counter = collections.Counter(tokens)
    kept = sorted((w for w, c in counter.items() if c >= min_count), key=lambda w: (-counter[w], w))
    if not kept:
        raise ValueError(f"no word occurs min_count={min_count} times in {len(tokens)} tokens")
    return Vocab(tuple(kept), np.array([counter[w] for w in kept], np.int64))


def skipgram_pairs(ids: Int[Array, " n"], window: int) -> Int[Array, "pairs 2"]:
    r"""Every (centre, context) pair of a token stream within ``window`` positions, vectorised.

    Position :math:`i` pairs with every :math:`j` with :math:`0 < |i - j| \le` ``window`` and
    :math:`0 \le j < n`: for :math:`n \ge 2w`, :math:`2wn - w(w+1)` pairs. Built from one
    broadcast ``positions[:, None] + offsets[None, :]`` and a validity mask, no Python loop.

    Args:
      ids: token ids ``[n]`` (numpy or jax; computed with numpy).
      window: :math:`w \ge 1`.

    Returns:
      int32 ``[pairs, 2]``: column 0 the centre id, column 1 the context id, ordered by centre
      position then offset (``-w .. -1, 1 .. w``).

    Derivation: derivations/16-word2vec.md
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must have shape [n], got {ids.shape}")
    _checks.positive_int("window", window)
    offsets = np.concatenate([np.arange(-window, 0), np.arange(1, window + 1)])  # [2w]
    positions = np.arange(len(ids))[:, None]  # [n, 1]
    other = positions + offsets[None, :]  # [n, 2w]
    valid = (other >= 0) & (other < len(ids))  # [n, 2w]
    centre = np.broadcast_to(positions, other.shape)[valid]  # [pairs]
    return np.stack([ids[centre], ids[other[valid]]], axis=1).astype(np.int32)  # [pairs, 2]


def subsample(key: PRNGKeyArray, ids: Int[Array, " n"], discard: Float[Array, " v"]) -> np.ndarray:
    """Drop each token of ``ids`` with probability ``discard[id]``.

    Args:
      key: PRNG key for one uniform per token.
      ids: token ids ``[n]``.
      discard: discard probabilities ``[V]`` from :func:`subsample_probability`.

    Returns:
      The kept ids, numpy ``[n_kept]`` (eager: the length depends on the draw).

    Derivation: derivations/16-word2vec.md
    """
    ids = np.asarray(ids)
    u = np.asarray(jax.random.uniform(key, ids.shape))
    return ids[u >= np.asarray(discard)[ids]]


def sample_negatives(
    key: PRNGKeyArray, noise_probs: Float[Array, " v"], shape: Sequence[int]
) -> Int[Array, "..."]:
    r"""Word ids drawn i.i.d. from ``noise_probs`` (:func:`noise_distribution`), int32 ``shape``.

    Inverse-CDF sampling: id :math:`= \min\{i : F_i > u\}` for :math:`u \sim U[0, F_V)` with
    :math:`F` the cumulative sum, one uniform and a binary search per draw (a Gumbel-max draw
    would cost :math:`V` uniforms per draw). Words of probability 0 are never drawn.

    Derivation: derivations/16-word2vec.md
    """
    noise_probs = jnp.asarray(noise_probs, jnp.float32)
    if noise_probs.ndim != 1:
        raise ValueError(f"noise_probs must have shape [V], got {noise_probs.shape}")
    cdf = jnp.cumsum(noise_probs)  # [V]
    u = jax.random.uniform(key, tuple(shape)) * cdf[-1]
    ids = jnp.searchsorted(cdf, u, side="right")
    return jnp.minimum(ids, noise_probs.shape[0] - 1).astype(jnp.int32)


# ----------------------------------------------------------------------------- model


class SkipGram(nn.Module):
    r"""Skip-gram with negative sampling: a centre table :math:`V` and a context table
    :math:`U`, both ``[vocab_size, dim]``.

    Initialisation follows the reference C code: centre vectors uniform in
    :math:`[-\tfrac{1}{2d}, \tfrac{1}{2d}]`, context vectors zero (the first gradient reaches
    :math:`U` through the non-zero :math:`V`).

    ``__call__(center_ids [B], context_ids [B], negative_ids [B, K])`` returns the per-pair
    :func:`negative_sampling_loss` ``[B]``; ``embed(ids)`` returns centre vectors, the ones
    usually kept as "the" word vectors.

    Derivation: derivations/16-word2vec.md
    """

    vocab_size: int
    dim: int = 64

    def setup(self):
        scale = 0.5 / self.dim

        def uniform(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, -scale, scale)

        self.center = self.param("center", uniform, (self.vocab_size, self.dim))
        self.context = self.param("context", nn.initializers.zeros, (self.vocab_size, self.dim))

    def __call__(self, center_ids, context_ids, negative_ids):
        if negative_ids.ndim != center_ids.ndim + 1:
            raise ValueError(
                f"negative_ids must have shape [*batch, K] for center_ids {center_ids.shape}, "
                f"got {negative_ids.shape}"
            )
        return negative_sampling_loss(
            self.center[center_ids], self.context[context_ids], self.context[negative_ids]
        )

    def embed(self, ids):
        return self.center[ids]


def context_log_probs(
    center: Float[Array, "*batch d"],
    context_table: Float[Array, "v d"],
    log_prior: Float[Array, " v"],
) -> Float[Array, "*batch v"]:
    r"""The normalised context distribution a negative-sampling model implies.

    At the optimum of the negative-sampling objective the score of a pair is
    :math:`u_o^\top v_c = \log\frac{P(o \mid c)}{K P_n(o)}` (Levy & Goldberg 2014), so
    :math:`P(o \mid c) \propto P_n(o)\exp(u_o^\top v_c)`:

    .. math::
       \log p(o \mid c) = \operatorname{log\,softmax}_o\big(u_o^\top v_c + \log P_n(o)\big)

    (``log_prior`` = :math:`\log P_n`; :math:`K` cancels in the normalisation). A model whose
    scores are all zero gives back :math:`P_n`; the centre-independent optimum
    :math:`u_o^\top v_c = \log\frac{P(o)}{K P_n(o)}` gives back the unigram :math:`P(o)`, the
    baseline of the recipe.

    Args:
      center: centre vectors :math:`v_c`, ``[*batch, d]``.
      context_table: all context vectors :math:`U`, ``[V, d]``.
      log_prior: :math:`\log P_n`, ``[V]``.

    Returns:
      Log-probabilities ``[*batch, V]``.

    References:
      Levy & Goldberg, *Neural Word Embedding as Implicit Matrix Factorization*, NeurIPS 2014.

    Derivation: derivations/16-word2vec.md
    """
    if context_table.ndim != 2 or log_prior.shape != context_table.shape[:1]:
        raise ValueError(
            f"context_table must be [V, d] and log_prior [V], got {context_table.shape} and "
            f"{log_prior.shape}"
        )
    scores = jnp.einsum("...d,vd->...v", center, context_table)  # [*batch, V]
    prior = jnp.reshape(log_prior, (1,) * (scores.ndim - 1) + log_prior.shape)  # [1.., V]
    return jax.nn.log_softmax(scores + prior, axis=-1)


# ----------------------------------------------------------------------------- reading the vectors


def cosine_similarity(
    a: Float[Array, "n d"], b: Float[Array, "m d"], eps: float = 1e-8
) -> Float[Array, "n m"]:
    r""":math:`\cos(a_i, b_j) = a_i^\top b_j / (\lVert a_i\rVert\lVert b_j\rVert)`, ``[n, m]``
    (norms floored at ``eps``).

    Derivation: derivations/16-word2vec.md
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must be [n, d] and [m, d], got {a.shape} and {b.shape}")
    an = a / jnp.maximum(jnp.linalg.norm(a, axis=1, keepdims=True), eps)  # [n, d]
    bn = b / jnp.maximum(jnp.linalg.norm(b, axis=1, keepdims=True), eps)  # [m, d]
    return an @ bn.T  # [n, m]


def nearest_neighbours(
    embeddings: Float[Array, "v d"], query_ids: Int[Array, " q"], k: int = 5
) -> tuple[Int[Array, "q k"], Float[Array, "q k"]]:
    """The ``k`` words closest to each query by cosine similarity, the query itself excluded.

    Args:
      embeddings: one vector per word, ``[V, d]``.
      query_ids: int ``[q]``.
      k: neighbours per query, ``1 <= k < V``.

    Returns:
      ``(ids [q, k], similarities [q, k])``, most similar first.

    Derivation: derivations/16-word2vec.md
    """
    embeddings, query_ids = jnp.asarray(embeddings), jnp.asarray(query_ids)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must have shape [V, d], got {embeddings.shape}")
    if query_ids.ndim != 1:
        raise ValueError(f"query_ids must have shape [q], got {query_ids.shape}")
    if not isinstance(k, int) or not 1 <= k < embeddings.shape[0]:
        raise ValueError(f"k must be an int in [1, V) = [1, {embeddings.shape[0]}), got {k!r}")
    sims = cosine_similarity(embeddings[query_ids], embeddings)  # [q, V]
    is_self = query_ids[:, None] == jnp.arange(embeddings.shape[0])[None, :]  # [q, V]
    sims = jnp.where(is_self, -jnp.inf, sims)
    values, ids = jax.lax.top_k(sims, k)  # [q, k]
    return ids, values
