r"""Contrastive language–image pre-training (CLIP) at the scale of the 8x8 digits.

An image tower :math:`f` and a text tower :math:`g`, each followed by a linear projection to a
shared :math:`D`-dimensional space and an L2 normalisation, are trained so that a matching pair
scores higher than every mismatched pair of the batch:

.. math::
   u_i = \frac{W_I f(x_i)}{\lVert W_I f(x_i) \rVert}, \qquad
   v_j = \frac{W_T g(t_j)}{\lVert W_T g(t_j) \rVert}, \qquad
   S_{ij} = e^{s}\, u_i^\top v_j,

with :math:`s` = ``log_temperature`` learned (:func:`clip_logits`), and the symmetric InfoNCE
loss (:func:`info_nce_loss`) the mean of the cross-entropies of the rows and of the columns of
:math:`S` against the diagonal. :math:`\log N - \mathcal{L}` lower-bounds the mutual information
of the pair (:func:`mutual_information_bound`). Zero-shot classification
(:func:`zero_shot_logits`) compares an image with one embedding per class, the renormalised mean
of the embeddings of that class's prompts (prompt ensembling).

Pure functions: :func:`l2_normalize`, :func:`clip_logits`, :func:`info_nce_loss`,
:func:`mutual_information_bound`, :func:`class_embeddings`, :func:`zero_shot_logits`,
:func:`recall_at_1`. Modules: :class:`ImageEncoder` (a small conv net of
:class:`genjax.nn.layers.Conv`), :class:`BagOfCharacters` (an order-blind text tower, the
baseline), :class:`CLIP` (both towers, the projections and the temperature; the text tower is
:class:`genjax.nn.transformer.TextEncoder` pooled at EOS).

Duplicates within a batch: labels are not an input of the loss. When two pairs of a batch show
the same digit, each caption is as right for the other image as for its own, yet InfoNCE counts
it as a negative (a *false negative*): the target is its own pair only. The recipe
(:mod:`genjax.recipes.clip`) can draw batches made of groups of ten pairs with distinct classes,
where no false negative occurs, and measures both.

References:
  Radford et al., *Learning Transferable Visual Models From Natural Language Supervision*, 2021,
  https://arxiv.org/abs/2103.00020

Derivation: derivations/23-contrastive.md
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from genjax._checks import positive_int
from genjax.nn.init import xavier_uniform
from genjax.nn.layers import Conv
from genjax.nn.transformer import TextEncoder, pool_at_last

__all__ = [
    "CLIP",
    "INIT_LOG_TEMPERATURE",
    "MAX_LOGIT_SCALE",
    "TEXT_TOWERS",
    "BagOfCharacters",
    "ImageEncoder",
    "class_embeddings",
    "clip_logits",
    "info_nce_loss",
    "l2_normalize",
    "mutual_information_bound",
    "recall_at_1",
    "zero_shot_logits",
]

INIT_LOG_TEMPERATURE = math.log(1 / 0.07)  #: CLIP's initial :math:`s`: logits scaled by 1/0.07
MAX_LOGIT_SCALE = 100.0  #: CLIP's clip of :math:`e^{s}`
TEXT_TOWERS = ("transformer", "bag_of_characters")  #: the ``text_tower`` options of :class:`CLIP`


def _check_embeddings(name: str, x) -> None:
    if jnp.ndim(x) < 2:
        raise ValueError(f"{name} must have shape [..., n, dim], got {jnp.shape(x)}")


def l2_normalize(x: Float[Array, "*batch dim"], eps: float = 1e-12) -> Float[Array, "*batch dim"]:
    r"""Rows scaled to unit Euclidean norm: :math:`x / \max(\lVert x \rVert, \epsilon)`.

    Args:
      x: ``[..., dim]``.
      eps: the floor of the norm (a zero row stays zero instead of becoming NaN).

    Returns:
      ``[..., dim]``.

    Derivation: derivations/23-contrastive.md
    """
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)  # [..., 1]
    return x / jnp.maximum(norm, eps)


def clip_logits(
    image_emb: Float[Array, "*batch n dim"],
    text_emb: Float[Array, "*batch m dim"],
    log_temperature: Float[Array, ""] | float,
) -> Float[Array, "*batch n m"]:
    r"""Scaled cosine similarities of every image with every text.

    .. math:: S_{ij} = \min(e^{s}, 100)\; u_i^\top v_j

    with :math:`u` = ``image_emb``, :math:`v` = ``text_emb`` (both expected L2-normalised,
    :func:`l2_normalize`) and :math:`s` = ``log_temperature``.

    Convention: :math:`e^{s}` *multiplies* the similarities, so it is the inverse of the softmax
    temperature :math:`\tau = e^{-s}` (CLIP's pseudocode calls :math:`s` the temperature ``t``;
    its code calls :math:`e^{s}` ``logit_scale``). CLIP initialises :math:`\tau = 0.07`
    (:data:`INIT_LOG_TEMPERATURE`) and clips :math:`e^{s}` at :data:`MAX_LOGIT_SCALE`; past the
    clip the gradient with respect to :math:`s` is zero.

    Args:
      image_emb: ``[..., n, dim]``.
      text_emb: ``[..., m, dim]``, same leading axes and ``dim``.
      log_temperature: scalar :math:`s`.

    Returns:
      ``[..., n, m]``.

    References:
      Radford et al., *Learning Transferable Visual Models From Natural Language Supervision*,
      2021, https://arxiv.org/abs/2103.00020

    Derivation: derivations/23-contrastive.md
    """
    _check_embeddings("image_emb", image_emb)
    _check_embeddings("text_emb", text_emb)
    if image_emb.shape[:-2] != text_emb.shape[:-2] or image_emb.shape[-1] != text_emb.shape[-1]:
        raise ValueError(
            f"image_emb [..., n, dim] and text_emb [..., m, dim] must share the leading axes and "
            f"dim, got {image_emb.shape} and {text_emb.shape}"
        )
    if jnp.ndim(log_temperature) != 0:
        raise ValueError(
            f"log_temperature must be a scalar, got shape {jnp.shape(log_temperature)}"
        )
    scale = jnp.minimum(jnp.exp(log_temperature), MAX_LOGIT_SCALE)
    return scale * jnp.einsum("...nd,...md->...nm", image_emb, text_emb)  # [..., n, m]


def info_nce_loss(
    image_emb: Float[Array, "*batch n dim"],
    text_emb: Float[Array, "*batch n dim"],
    log_temperature: Float[Array, ""] | float,
) -> Float[Array, ""]:
    r"""The symmetric InfoNCE loss of CLIP: pair :math:`i` must be picked out of the batch, from
    the image's side and from the text's side.

    .. math::
       \mathcal{L} = \frac{1}{2N}\sum_{i=1}^{N}\Big[
         -\log\frac{e^{S_{ii}}}{\sum_j e^{S_{ij}}} - \log\frac{e^{S_{ii}}}{\sum_j e^{S_{ji}}}\Big]

    with :math:`S` = :func:`clip_logits` ``(image_emb, text_emb, log_temperature)``, pairs
    :math:`(u_i, v_i)` on the diagonal and :math:`N` = ``n``. Leading axes are independent
    batches (groups), each with its own :math:`N` negatives, averaged.

    Duplicates: the targets are the diagonal only. Two pairs of one class in a batch make each
    other's caption a false negative, which the loss pushes away although it is as right; the
    loss then cannot reach 0. Draw groups with distinct classes (leading axes) to avoid it.

    Args:
      image_emb: ``[..., n, dim]``, L2-normalised.
      text_emb: ``[..., n, dim]``, L2-normalised, row ``i`` paired with ``image_emb``'s.
      log_temperature: scalar :math:`s`.

    Returns:
      Scalar loss in nats.

    References:
      Oord et al., *Representation Learning with Contrastive Predictive Coding*, 2018,
      https://arxiv.org/abs/1807.03748;
      Radford et al., *Learning Transferable Visual Models From Natural Language Supervision*,
      2021, https://arxiv.org/abs/2103.00020

    Derivation: derivations/23-contrastive.md
    """
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image_emb and text_emb must both be [..., n, dim] pairs, got {image_emb.shape} and "
            f"{text_emb.shape}"
        )
    logits = clip_logits(image_emb, text_emb, log_temperature).astype(jnp.float32)  # [..., N, N]
    diagonal = jnp.diagonal(logits, axis1=-2, axis2=-1)  # [..., N]
    image_to_text = jax.nn.logsumexp(logits, axis=-1) - diagonal  # [..., N]
    text_to_image = jax.nn.logsumexp(logits, axis=-2) - diagonal  # [..., N]
    return 0.5 * (jnp.mean(image_to_text) + jnp.mean(text_to_image))


def mutual_information_bound(loss: Float[Array, "*batch"], n: int) -> Float[Array, "*batch"]:
    r"""The InfoNCE lower bound on the mutual information of a pair: :math:`\log N - \mathcal{L}`.

    .. math:: I(X; Y) \ \ge\ \log N - \mathcal{L}_N

    for :math:`\mathcal{L}_N` the expected one-directional InfoNCE loss (each direction of
    :func:`info_nce_loss` is one such loss, so their mean obeys it too) over batches of
    :math:`N` = ``n`` pairs, with any critic. The bound is at most :math:`\log N`, so it
    saturates when :math:`I > \log N`.

    Args:
      loss: InfoNCE loss(es) in nats.
      n: pairs per batch :math:`N`, positive.

    Returns:
      The bound, in nats, shaped as ``loss``.

    References:
      Poole et al., *On Variational Bounds of Mutual Information*, 2019,
      https://arxiv.org/abs/1905.06922

    Derivation: derivations/23-contrastive.md
    """
    positive_int("n", n)
    return math.log(n) - loss


def class_embeddings(
    prompt_emb: Float[Array, "classes prompts dim"],
) -> Float[Array, "classes dim"]:
    r"""One embedding per class from several prompts (prompt ensembling).

    .. math:: w_c = \frac{\bar v_c}{\lVert \bar v_c \rVert}, \qquad
              \bar v_c = \frac{1}{P}\sum_{p=1}^{P} \frac{v_{cp}}{\lVert v_{cp} \rVert}

    Args:
      prompt_emb: ``[classes, prompts, dim]`` text embeddings :math:`v_{cp}` (normalised here
        first, so raw projections may be passed).

    Returns:
      ``[classes, dim]`` unit vectors :math:`w_c`.

    References:
      Radford et al., *Learning Transferable Visual Models From Natural Language Supervision*,
      2021, https://arxiv.org/abs/2103.00020 (section 3.1.4)

    Derivation: derivations/23-contrastive.md
    """
    if jnp.ndim(prompt_emb) != 3:
        raise ValueError(
            f"prompt_emb must have shape [classes, prompts, dim], got {jnp.shape(prompt_emb)}"
        )
    return l2_normalize(jnp.mean(l2_normalize(prompt_emb), axis=1))  # [C, D]


def zero_shot_logits(
    image_emb: Float[Array, "n dim"],
    prompt_emb: Float[Array, "classes prompts dim"],
    log_temperature: Float[Array, ""] | float = 0.0,
) -> Float[Array, "n classes"]:
    r"""Zero-shot class scores: each image against the ensembled embedding of each class.

    .. math:: z_{ic} = \min(e^{s}, 100)\; u_i^\top w_c

    with :math:`w_c` = :func:`class_embeddings` ``(prompt_emb)``, :math:`u` = ``image_emb``
    (normalised here) and :math:`s` = ``log_temperature`` (a positive scale leaves the argmax
    unchanged; it matters only for probabilities). No label is used: the classifier is read
    from the text tower.

    Args:
      image_emb: ``[n, dim]`` image embeddings.
      prompt_emb: ``[classes, prompts, dim]`` text embeddings of each class's prompts.
      log_temperature: scalar :math:`s`.

    Returns:
      ``[n, classes]`` logits; ``argmax`` is the predicted class.

    References:
      Radford et al., *Learning Transferable Visual Models From Natural Language Supervision*,
      2021, https://arxiv.org/abs/2103.00020

    Derivation: derivations/23-contrastive.md
    """
    if jnp.ndim(image_emb) != 2:
        raise ValueError(f"image_emb must have shape [n, dim], got {jnp.shape(image_emb)}")
    weights = class_embeddings(prompt_emb)  # [C, D]
    if weights.shape[-1] != image_emb.shape[-1]:
        raise ValueError(
            f"image_emb [n, dim] and prompt_emb [classes, prompts, dim] must share dim, got "
            f"{jnp.shape(image_emb)} and {jnp.shape(prompt_emb)}"
        )
    return clip_logits(l2_normalize(image_emb), weights, log_temperature)  # [N, C]


def recall_at_1(
    query_emb: Float[Array, "n dim"],
    key_emb: Float[Array, "m dim"],
    query_labels: Int[Array, " n"],
    key_labels: Int[Array, " m"],
) -> float:
    r"""Class-level recall@1 of retrieval: the fraction of queries whose nearest key (largest
    cosine similarity) has the query's class.

    .. math:: R@1 = \frac{1}{n}\sum_{i=1}^{n}
              \big[\, y^{k}_{j^*(i)} = y^{q}_i \,\big], \qquad
              j^*(i) = \arg\max_j\ u_i^\top v_j

    With ten classes many keys are equally right for a query (every caption of its digit, every
    image of it), so a hit is the right *class*, not the query's own partner. Image→text: the
    queries are images, the keys their captions; text→image swaps them. Chance is
    :math:`\sum_c \pi^q_c \pi^k_c` (about 0.1 for balanced classes).

    Args:
      query_emb: ``[n, dim]``.
      key_emb: ``[m, dim]``.
      query_labels: ``[n]`` ints.
      key_labels: ``[m]`` ints.

    Returns:
      Recall in [0, 1].

    Derivation: derivations/23-contrastive.md
    """
    if jnp.ndim(query_emb) != 2 or jnp.ndim(key_emb) != 2:
        raise ValueError(
            f"query_emb and key_emb must have shape [n, dim] and [m, dim], got "
            f"{jnp.shape(query_emb)} and {jnp.shape(key_emb)}"
        )
    if jnp.shape(query_labels) != jnp.shape(query_emb)[:1]:
        raise ValueError(
            f"query_labels must have shape [n] = {jnp.shape(query_emb)[:1]}, got "
            f"{jnp.shape(query_labels)}"
        )
    if jnp.shape(key_labels) != jnp.shape(key_emb)[:1]:
        raise ValueError(
            f"key_labels must have shape [m] = {jnp.shape(key_emb)[:1]}, got "
            f"{jnp.shape(key_labels)}"
        )
    sims = clip_logits(l2_normalize(query_emb), l2_normalize(key_emb), 0.0)  # [n, m]
    nearest = np.asarray(jnp.argmax(sims, axis=-1))  # [n]
    return float(np.mean(np.asarray(key_labels)[nearest] == np.asarray(query_labels)))


# ----------------------------------------------------------------------------- modules


class ImageEncoder(nn.Module):
    r"""A small conv net: 3x3 convolutions with GELU, a global average pool.

    .. math:: f(x) = \frac{1}{hw}\sum_{i,j} A_{ij}, \qquad
              A = \operatorname{GELU}(\operatorname{conv}_L \cdots
                  \operatorname{GELU}(\operatorname{conv}_1 x))

    Convolutions are :class:`genjax.nn.layers.Conv` (padding 1).

    Attributes:
      widths: channels of each convolution.
      strides: stride of each (same length).

    Call: ``apply(params, x [N, H, W, C] in [0, 1])`` returns the pooled features
    ``[N, widths[-1]]`` (the linear probe's input).

    Derivation: derivations/23-contrastive.md
    """

    widths: tuple[int, ...] = (32, 64, 64)
    strides: tuple[int, ...] = (1, 2, 1)

    @nn.compact
    def __call__(self, x: Float[Array, "batch H W C"]) -> Float[Array, "batch features"]:
        if x.ndim != 4:
            raise ValueError(f"images must have shape [batch, H, W, C], got {x.shape}")
        if len(self.widths) != len(self.strides):
            raise ValueError(f"widths {self.widths} and strides {self.strides} must match")
        h = 2.0 * x - 1.0  # [0, 1] -> [-1, 1]
        for w, s in zip(self.widths, self.strides, strict=True):
            h = nn.gelu(Conv(w, 3, s, 1)(h))  # [N, H_l, W_l, w]
        return jnp.mean(h, axis=(1, 2))  # [N, widths[-1]]


class BagOfCharacters(nn.Module):
    r"""An order-blind text tower: the mean of the token embeddings of a caption, then an MLP.

    .. math:: g(t) = \operatorname{MLP}\Big(\frac{1}{\ell}\sum_{k < \ell} E[t_k]\Big)

    It sees which characters a caption holds, not their order: the baseline that tells what the
    transformer's attention adds.

    Attributes:
      vocab_size: number of token ids.
      features: embedding and output width.

    Derivation: derivations/23-contrastive.md
    """

    vocab_size: int
    features: int = 64

    @nn.compact
    def __call__(
        self, tokens: Int[Array, "batch length"], lengths: Int[Array, " batch"]
    ) -> Float[Array, "batch features"]:
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [batch, length], got {tokens.shape}")
        e = nn.Embed(self.vocab_size, self.features)(tokens)  # [B, L, D]
        real = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(e.dtype)  # [B, L]
        mean = jnp.sum(e * real[..., None], axis=1) / jnp.maximum(lengths, 1)[:, None]  # [B, D]
        h = nn.gelu(nn.Dense(2 * self.features)(mean))  # [B, 2D]
        return nn.Dense(self.features)(h)  # [B, D]


class CLIP(nn.Module):
    r"""Image and text towers with linear projections to a shared unit sphere, and the learned
    temperature.

    .. math:: u = \frac{W_I f(x)}{\lVert W_I f(x) \rVert}, \qquad
              v = \frac{W_T\, g(t)}{\lVert W_T\, g(t) \rVert}

    with :math:`f` = :class:`ImageEncoder`, :math:`g` = :class:`~genjax.nn.transformer.TextEncoder`
    pooled at the EOS position (:func:`~genjax.nn.transformer.pool_at_last`), or
    :class:`BagOfCharacters` (``text_tower="bag_of_characters"``), and the parameter
    ``log_temperature`` :math:`s` initialised at :data:`INIT_LOG_TEMPERATURE`.

    Attributes:
      vocab_size: text token ids.
      embed_dim: shared embedding width :math:`D`.
      widths, strides: the image tower's convolutions.
      text_features, text_heads, text_layers, max_length: the text tower.
      text_tower: one of :data:`TEXT_TOWERS`.
      text_dropout: dropout rate of the transformer text tower (``"dropout"`` RNG stream, when
        ``deterministic=False``).

    Methods: ``encode_image(x) -> u [N, D]``, ``image_features(x) -> f(x)``,
    ``encode_text(tokens, lengths, *, deterministic=True) -> v [M, D]``;
    ``__call__(x, tokens, lengths, *, deterministic=True)`` returns ``(u, v, s)``.

    References:
      Radford et al., *Learning Transferable Visual Models From Natural Language Supervision*,
      2021, https://arxiv.org/abs/2103.00020

    Derivation: derivations/23-contrastive.md
    """

    vocab_size: int
    embed_dim: int = 32
    widths: tuple[int, ...] = (32, 64, 64)
    strides: tuple[int, ...] = (1, 2, 1)
    text_features: int = 64
    text_heads: int = 4
    text_layers: int = 2
    max_length: int = 32
    text_tower: str = "transformer"
    text_dropout: float = 0.0

    def setup(self):
        if self.text_tower not in TEXT_TOWERS:
            raise ValueError(f"text_tower must be one of {TEXT_TOWERS}, got {self.text_tower!r}")
        positive_int("embed_dim", self.embed_dim)
        self.image_tower = ImageEncoder(self.widths, self.strides)
        if self.text_tower == "transformer":
            self.text_encoder = TextEncoder(
                self.vocab_size,
                self.text_features,
                self.text_heads,
                self.text_layers,
                self.max_length,
                self.text_dropout,
            )
        else:
            self.text_encoder = BagOfCharacters(self.vocab_size, self.text_features)
        self.image_projection = nn.Dense(
            self.embed_dim, use_bias=False, kernel_init=xavier_uniform()
        )
        self.text_projection = nn.Dense(
            self.embed_dim, use_bias=False, kernel_init=xavier_uniform()
        )
        self.log_temperature = self.param(
            "log_temperature", nn.initializers.constant(INIT_LOG_TEMPERATURE), ()
        )

    def image_features(self, x: Float[Array, "n H W C"]) -> Float[Array, "n features"]:
        """The image tower's pooled features :math:`f(x)` (before the projection)."""
        return self.image_tower(x)

    def encode_image(self, x: Float[Array, "n H W C"]) -> Float[Array, "n embed"]:
        """Unit image embeddings :math:`u`, ``[n, embed_dim]``."""
        return l2_normalize(self.image_projection(self.image_tower(x)))

    def encode_text(
        self,
        tokens: Int[Array, "m length"],
        lengths: Int[Array, " m"],
        *,
        deterministic: bool = True,
    ) -> Float[Array, "m embed"]:
        """Unit text embeddings :math:`v`, ``[m, embed_dim]``."""
        if self.text_tower == "transformer":
            h = self.text_encoder(tokens, lengths, deterministic=deterministic)  # [M, L, F]
            h = pool_at_last(h, lengths)  # [M, F]
        else:
            h = self.text_encoder(tokens, lengths)  # [M, F]
        return l2_normalize(self.text_projection(h))

    def __call__(self, x, tokens, lengths, *, deterministic: bool = True):
        v = self.encode_text(tokens, lengths, deterministic=deterministic)
        return self.encode_image(x), v, self.log_temperature
