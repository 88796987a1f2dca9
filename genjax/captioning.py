r"""Image captioning: an encoder–decoder transformer from image patches to caption tokens.

The image is cut into :math:`p \times p` patches (:func:`patchify`; 2x2 patches of an 8x8 digit
are 16 tokens of 4 pixels, the default 4x4 patches 4 tokens of 16), each patch embedded
linearly and given a learned position, and a stack of
:class:`genjax.nn.transformer.EncoderBlock` turns them into a memory :math:`m`. A stack of
:class:`genjax.nn.transformer.DecoderBlock` reads the caption so far under a causal mask and
cross-attends to :math:`m`, so the caption's likelihood factorises left to right:

.. math::
   p_\theta(c \mid x) = \prod_{i=1}^{n} p_\theta(c_i \mid c_{<i}, x), \qquad
   c = (\text{BOS}, c_1, \dots, c_n = \text{EOS}).

Training is teacher-forced (:func:`caption_nll`): every position predicts the next true token
in one pass. Decoding (:func:`sample`) feeds the model its own tokens,
greedy (``temperature=0``) or drawn at a temperature, in ``jax.lax.scan``
(:func:`genjax.nn.transformer.generate`), and :func:`stop_at_eos` pads everything after the
first EOS. ``Captioner(image_blind=True)`` is the same decoder with no memory and no encoder:
the baseline whose loss cannot fall below the entropy of the captions themselves
(:func:`image_blind_entropy`).

Captions and their tokens come from :mod:`genjax.captions` (``BOS ... EOS PAD``, PAD ignored).

References:
  Vinyals et al., *Show and Tell: A Neural Image Caption Generator*, 2015,
  https://arxiv.org/abs/1411.4555
  Dosovitskiy et al., *An Image is Worth 16x16 Words: Transformers for Image Recognition at
  Scale*, 2020, https://arxiv.org/abs/2010.11929

Derivation: derivations/25-captioning.md
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from genjax import captions
from genjax._checks import positive_int
from genjax.nn.attention import causal_mask
from genjax.nn.init import xavier_uniform
from genjax.nn.positional import LearnedPositionalEmbedding, sinusoidal_encoding
from genjax.nn.transformer import DecoderBlock, EncoderBlock, generate, token_nll

__all__ = [
    "Captioner",
    "caption_nll",
    "image_blind_entropy",
    "patchify",
    "sample",
    "stop_at_eos",
    "unpatchify",
]


def _check_patch(patch, height: int, width: int) -> None:
    positive_int("patch", patch)
    if height % patch or width % patch:
        raise ValueError(
            f"patch ({patch}) must divide the image height and width, got {height}x{width}"
        )


def patchify(
    x: Float[Array, "batch H W C"], patch: int
) -> Float[Array, "batch num_patches patch_dim"]:
    r"""Non-overlapping ``patch`` x ``patch`` patches of images, in raster order, flattened.

    .. math::
       P_{b,\ r (W/p) + s,\ (i p + j) C + k} = x_{b,\ r p + i,\ s p + j,\ k}

    with :math:`p` = ``patch``, patch row :math:`r`, column :math:`s`, and :math:`(i, j, k)` the
    pixel and channel inside the patch. :func:`unpatchify` is its inverse.

    Args:
      x: ``[batch, H, W, C]`` images; ``patch`` must divide ``H`` and ``W``.
      patch: side :math:`p` of a square patch, positive.

    Returns:
      ``[batch, (H/p) (W/p), p p C]``.

    References:
      Dosovitskiy et al., *An Image is Worth 16x16 Words*, 2020, https://arxiv.org/abs/2010.11929

    Derivation: derivations/25-captioning.md
    """
    if jnp.ndim(x) != 4:
        raise ValueError(f"x must have shape [batch, H, W, C], got {jnp.shape(x)}")
    b, h, w, c = x.shape
    _check_patch(patch, h, w)
    x = x.reshape(b, h // patch, patch, w // patch, patch, c)  # [B, h, p, w, p, C]
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, h, w, p, p, C]
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)  # [B, N, p p C]


def unpatchify(
    patches: Float[Array, "batch num_patches patch_dim"],
    patch: int,
    image_shape: tuple[int, int, int],
) -> Float[Array, "batch H W C"]:
    r"""The images whose :func:`patchify` is ``patches``: :math:`x = P^{-1}(P(x))`.

    Args:
      patches: ``[batch, (H/p) (W/p), p p C]``.
      patch: side :math:`p` of a patch.
      image_shape: ``(H, W, C)``.

    Returns:
      ``[batch, H, W, C]``.

    References:
      Dosovitskiy et al., *An Image is Worth 16x16 Words*, 2020, https://arxiv.org/abs/2010.11929

    Derivation: derivations/25-captioning.md
    """
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {image_shape!r}")
    h, w, c = image_shape
    _check_patch(patch, h, w)
    expected = ((h // patch) * (w // patch), patch * patch * c)
    if jnp.ndim(patches) != 3 or tuple(patches.shape[1:]) != expected:
        raise ValueError(
            f"patches must have shape [batch, {expected[0]}, {expected[1]}] for images "
            f"{image_shape} in {patch}x{patch} patches, got {jnp.shape(patches)}"
        )
    b = patches.shape[0]
    x = patches.reshape(b, h // patch, w // patch, patch, patch, c)  # [B, h, w, p, p, C]
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, h, p, w, p, C]
    return x.reshape(b, h, w, c)  # [B, H, W, C]


def caption_nll(
    logits: Float[Array, "batch length_minus_1 vocab"], tokens: Int[Array, "batch length"]
) -> Float[Array, " batch"]:
    r"""Teacher-forced negative log-likelihood of each caption, in nats, PAD ignored.

    .. math::
       -\log p_\theta(c \mid x) = -\sum_{i=1}^{L-1} [\,c_i \ne \text{PAD}\,]\,
       \log \operatorname{softmax}(z_{i-1})_{c_i}

    with :math:`c` = ``tokens`` (``BOS ... EOS PAD ...``) and :math:`z_{i-1}` = ``logits[:, i-1]``,
    the model's prediction of token :math:`i` from tokens :math:`0..i-1` (the model reads
    ``tokens[:, :-1]``). Each term is :func:`genjax.nn.transformer.token_nll`; EOS is predicted,
    BOS is not. Divide the sum over a batch by the number of non-PAD targets
    (``(tokens[:, 1:] != PAD).sum()``) for nats per caption token.

    Args:
      logits: ``[batch, L - 1, vocab]`` logits of the inputs ``tokens[:, :-1]``.
      tokens: ``[batch, L]`` integer caption tokens.

    Returns:
      float32 ``[batch]``: nats per caption.

    References:
      Williams and Zipser, *A Learning Algorithm for Continually Running Fully Recurrent Neural
      Networks*, 1989 (teacher forcing); Vinyals et al., *Show and Tell*, 2015,
      https://arxiv.org/abs/1411.4555

    Derivation: derivations/25-captioning.md
    """
    if jnp.ndim(tokens) != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must have shape [batch, L] with L >= 2, got {jnp.shape(tokens)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"tokens must be an integer array, got dtype {tokens.dtype}")
    b, length = tokens.shape
    if jnp.ndim(logits) != 3 or tuple(logits.shape[:2]) != (b, length - 1):
        raise ValueError(
            f"logits must have shape [batch, L - 1, vocab] = [{b}, {length - 1}, vocab] for "
            f"tokens {tokens.shape}, got {jnp.shape(logits)}"
        )
    targets = tokens[:, 1:]  # [B, L - 1]
    nll = token_nll(logits, targets)  # [B, L - 1]
    return jnp.sum(jnp.where(targets != captions.PAD, nll, 0.0), axis=1)  # [B]


def stop_at_eos(tokens: Int[Array, "batch length"]) -> Int[Array, "batch length"]:
    r"""Decoded tokens with everything after the first EOS of each row set to PAD.

    .. math:: \tilde c_i = \text{PAD} \ \text{if}\ \exists\, j < i: c_j = \text{EOS},
       \quad\text{else}\ c_i

    The decoder is causal, so the tokens up to the first EOS do not depend on what follows it:
    padding afterwards is the same as stopping there.

    Args:
      tokens: ``[batch, L]`` integer tokens.

    Returns:
      ``[batch, L]``, the same dtype.

    References:
      Vinyals et al., *Show and Tell: A Neural Image Caption Generator*, 2015,
      https://arxiv.org/abs/1411.4555

    Derivation: derivations/25-captioning.md
    """
    if jnp.ndim(tokens) != 2:
        raise ValueError(f"tokens must have shape [batch, L], got {jnp.shape(tokens)}")
    is_eos = (tokens == captions.EOS).astype(jnp.int32)  # [B, L]
    after = jnp.cumsum(is_eos, axis=1) - is_eos > 0  # [B, L]: an EOS strictly before
    return jnp.where(after, jnp.asarray(captions.PAD, tokens.dtype), tokens)


def image_blind_entropy(class_probs=None, split: str = "train") -> float:
    r"""The entropy of a caption, in nats: the lowest expected loss of a model that ignores the
    image.

    A caption is drawn as a class :math:`y \sim \pi` (``class_probs``), then one of the
    :math:`P` phrasings of ``split`` uniformly. When every phrasing is distinct and names its
    class alone (so the caption determines :math:`y`),

    .. math::
       H(C) = H(Y) + H(C \mid Y) = -\sum_y \pi_y \log \pi_y + \log P,

    :math:`\log 10 + \log P` for uniform classes. A model of :math:`p(c)` without the image
    has expected NLL :math:`\ge H(C)`, with equality at :math:`q = p`; a model that sees the
    image can reach :math:`H(C \mid X) = \log P` when the image fixes the class, lower by
    :math:`H(Y) = I(C; X)`.

    Args:
      class_probs: ``[10]`` class probabilities :math:`\pi` summing to 1; ``None`` is uniform.
      split: ``"train"`` or ``"held_out"`` (:data:`genjax.captions.SPLITS`).

    Returns:
      :math:`H(C)` in nats per caption, a Python float.

    References:
      Cover and Thomas, *Elements of Information Theory*, 2nd ed., 2006, ch. 2 (the chain rule
      of entropy; cross-entropy = entropy + KL).

    Derivation: derivations/25-captioning.md
    """
    num_phrasings = len(captions.SPLITS[split]) if split in captions.SPLITS else None
    if num_phrasings is None:
        raise ValueError(f"split must be one of {', '.join(captions.SPLITS)}, got {split!r}")
    pi = np.full(10, 0.1) if class_probs is None else np.asarray(class_probs, np.float64)
    if pi.shape != (10,):
        raise ValueError(f"class_probs must have shape [10], got {pi.shape}")
    if np.any(pi < 0) or not math.isclose(pi.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"class_probs must be non-negative and sum to 1, got sum {pi.sum()}")
    nonzero = pi[pi > 0]
    return float(-np.sum(nonzero * np.log(nonzero)) + math.log(num_phrasings))


class Captioner(nn.Module):
    r"""A patch encoder and a causal caption decoder that cross-attends to it.

    .. math::
       m = \operatorname{LN}\,\operatorname{Enc}\big(W_e\,P(x) + E^{\text{pos}}\big), \qquad
       p(c_i \mid c_{<i}, x) = \operatorname{softmax}\big(W_o\,\operatorname{LN}
       \operatorname{Dec}(E[c_{<i}] + S, m)_{i-1}\big)

    with :math:`P` = :func:`patchify`, :math:`E^{\text{pos}}` learned patch positions
    (:class:`~genjax.nn.positional.LearnedPositionalEmbedding`), :math:`S` the sinusoidal
    positions of the caption (:func:`~genjax.nn.positional.sinusoidal_encoding`, defined at
    lengths never trained, e.g. the longer held-out phrasings), :math:`\operatorname{Enc}` a
    stack of :class:`~genjax.nn.transformer.EncoderBlock` and :math:`\operatorname{Dec}` of
    :class:`~genjax.nn.transformer.DecoderBlock` under :func:`~genjax.nn.attention.causal_mask`.

    With ``image_blind=True`` the decoder gets no memory (no cross-attention, no encoder
    parameters): :math:`p(c_i \mid c_{<i})`, a caption language model, the baseline.

    Call ``apply(params, images [B, H, W, C], tokens [B, T])`` for logits ``[B, T, vocab]``;
    ``method="encode"`` gives the memory ``[B, N, features]``, ``method="decode"`` takes
    ``(tokens, memory)`` (``memory=None`` when image-blind).

    Attributes:
      vocab_size: token ids (:data:`genjax.captions.VOCAB_SIZE`).
      max_length: longest caption read (:data:`genjax.captions.MAX_LENGTH`).
      patch: patch side.
      max_patches: rows of the patch position table (at least the number of patches).
      features: model width.
      num_layers: encoder and decoder depth (each).
      num_heads: heads per attention (must divide ``features``).
      mlp_ratio: MLP width over ``features``.
      dropout_rate: dropout rate (``"dropout"`` RNG stream, when ``deterministic=False``).
      image_blind: ignore the image (the baseline).

    References:
      Vaswani et al., *Attention Is All You Need*, 2017, https://arxiv.org/abs/1706.03762

    Derivation: derivations/25-captioning.md
    """

    vocab_size: int = captions.VOCAB_SIZE
    max_length: int = captions.MAX_LENGTH
    patch: int = 4
    max_patches: int = 64
    features: int = 32
    num_layers: int = 1
    num_heads: int = 4
    mlp_ratio: int = 4
    dropout_rate: float = 0.0
    image_blind: bool = False

    def setup(self):
        for name in ("vocab_size", "max_length", "patch", "max_patches", "features"):
            positive_int(name, getattr(self, name))
        positive_int("num_layers", self.num_layers)
        if self.features % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide features ({self.features})")
        block = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio)
        block["dropout_rate"] = self.dropout_rate
        if not self.image_blind:
            self.patch_embed = nn.Dense(self.features, kernel_init=xavier_uniform())
            self.patch_positions = LearnedPositionalEmbedding(self.max_patches, init_std=1.0)
            self.encoder = [EncoderBlock(**block) for _ in range(self.num_layers)]
            self.memory_norm = nn.LayerNorm()
        # unit-variance token vectors: the scale of the sinusoidal table's entries
        self.token_embed = nn.Embed(
            self.vocab_size, self.features, embedding_init=nn.initializers.normal(1.0)
        )
        self.decoder = [DecoderBlock(**block) for _ in range(self.num_layers)]
        self.out_norm = nn.LayerNorm()
        self.head = nn.Dense(self.vocab_size, kernel_init=xavier_uniform())
        self.dropout = nn.Dropout(self.dropout_rate)

    def encode(
        self, images: Float[Array, "batch H W C"], *, deterministic: bool = True
    ) -> Float[Array, "batch num_patches features"]:
        """The memory ``[batch, num_patches, features]`` of ``images``."""
        if self.image_blind:
            raise ValueError("an image_blind Captioner has no encoder")
        x = self.patch_embed(patchify(images, self.patch))  # [B, N, D]
        x = self.dropout(self.patch_positions(x), deterministic=deterministic)
        for block in self.encoder:
            x = block(x, deterministic=deterministic)  # [B, N, D], every patch sees every patch
        return self.memory_norm(x)

    def decode(
        self,
        tokens: Int[Array, "batch length"],
        memory: Float[Array, "batch num_patches features"] | None,
        *,
        deterministic: bool = True,
    ) -> Float[Array, "batch length vocab"]:
        """Logits ``[batch, length, vocab]``; position ``t`` sees ``tokens[:, :t+1]``."""
        if jnp.ndim(tokens) != 2:
            raise ValueError(f"tokens must have shape [batch, length], got {jnp.shape(tokens)}")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise TypeError(f"tokens must be an integer array, got dtype {tokens.dtype}")
        if tokens.shape[1] > self.max_length:
            raise ValueError(f"tokens have length {tokens.shape[1]} > max_length {self.max_length}")
        if (memory is None) != self.image_blind:
            raise ValueError(
                "memory must be None for an image_blind Captioner and given otherwise, got "
                f"{'None' if memory is None else 'an array'} with image_blind={self.image_blind}"
            )
        length = tokens.shape[1]
        y = self.token_embed(tokens) + sinusoidal_encoding(length, self.features)[None]  # [B,T,D]
        y = self.dropout(y, deterministic=deterministic)
        mask = causal_mask(length)  # [1, 1, T, T]
        for block in self.decoder:
            y = block(y, memory, self_mask=mask, deterministic=deterministic)  # [B, T, D]
        return self.head(self.out_norm(y))  # [B, T, V]

    def __call__(
        self,
        images: Float[Array, "batch H W C"],
        tokens: Int[Array, "batch length"],
        *,
        deterministic: bool = True,
    ) -> Float[Array, "batch length vocab"]:
        if jnp.ndim(images) != 4:
            raise ValueError(f"images must have shape [batch, H, W, C], got {jnp.shape(images)}")
        if images.shape[0] != jnp.shape(tokens)[0]:
            raise ValueError(
                f"images and tokens must share the batch size, got {images.shape[0]} and "
                f"{jnp.shape(tokens)[0]}"
            )
        memory = None if self.image_blind else self.encode(images, deterministic=deterministic)
        return self.decode(tokens, memory, deterministic=deterministic)


def sample(
    key: jax.Array,
    model: Captioner,
    params,
    images: Float[Array, "n H W C"],
    *,
    temperature: float = 1.0,
    max_length: int | None = None,
) -> Int[Array, "n length"]:
    r"""Captions of ``images``, decoded token by token from BOS, padded after the first EOS.

    .. math::
       c_i \sim \operatorname{Categorical}\big(\operatorname{softmax}(z_{i-1} / T)\big), \qquad
       z_{i-1} = \text{logits of } p_\theta(\cdot \mid c_{<i}, x),

    with :math:`T` = ``temperature``; :math:`T = 0` takes the argmax (greedy decoding). The
    memory is computed once; the steps run in ``jax.lax.scan``
    (:func:`genjax.nn.transformer.generate`), then :func:`stop_at_eos`. Read the strings with
    :func:`genjax.captions.detokenize`.

    Args:
      key: PRNG key (unused when ``temperature == 0``).
      model: a :class:`Captioner` (an image-blind one reads only the batch size of ``images``).
      params: its parameters.
      images: ``[n, H, W, C]``.
      temperature: :math:`T \ge 0`.
      max_length: tokens per caption, BOS included (default ``model.max_length``).

    Returns:
      int32 ``[n, max_length]``: ``BOS c_1 ... EOS PAD ...`` (no EOS if none was drawn).

    References:
      Holtzman et al., *The Curious Case of Neural Text Degeneration*, 2019,
      https://arxiv.org/abs/1904.09751 (greedy against sampled decoding)

    Derivation: derivations/25-captioning.md
    """
    if not isinstance(model, Captioner):
        raise TypeError(f"model must be a Captioner, got {type(model).__name__}")
    if jnp.ndim(images) != 4:
        raise ValueError(f"images must have shape [n, H, W, C], got {jnp.shape(images)}")
    max_length = model.max_length if max_length is None else max_length
    positive_int("max_length", max_length)
    if not 2 <= max_length <= model.max_length:
        raise ValueError(f"max_length must lie in [2, {model.max_length}], got {max_length}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    memory = None if model.image_blind else model.apply(params, images, method="encode")
    logits_fn = lambda tokens: model.apply(params, tokens, memory, method="decode")
    prompt = jnp.full((images.shape[0], 1), captions.BOS, jnp.int32)  # [n, 1]
    tokens = generate(key, logits_fn, prompt, max_length - 1, temperature=temperature)
    return stop_at_eos(tokens)  # [n, max_length]
