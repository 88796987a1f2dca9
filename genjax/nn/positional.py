r"""Position information for attention: sinusoidal, learned, relative bias, rotary.

Attention is permutation-equivariant (derivations/03-attention.md), so order has to be put in:

* :func:`sinusoidal_encoding`: the fixed table of Vaswani et al., added to the token embeddings;
  :func:`sinusoidal_shift` is the fixed linear map taking the encoding of ``pos`` to that of
  ``pos + k``;
* :class:`LearnedPositionalEmbedding`: a trained table (GPT-2, BERT);
* :class:`RelativePositionBias`: T5's bucketed relative-position bias added to the attention
  scores (:func:`relative_position_bucket`);
* :func:`apply_rotary`: RoPE, rotating query/key feature pairs by an angle proportional to the
  position, so that scores depend on relative position only.

Convention: features come in *interleaved* pairs :math:`(2i, 2i+1)` with frequency
:math:`\omega_i = \text{base}^{-2i/d}` (Vaswani et al.; Su et al.). Some code instead puts all
sines (or first coordinates) in the first half; :func:`interleaved_to_halves` converts.

Derivation: derivations/04-positional-encoding.md
"""

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from genjax._checks import positive_int

__all__ = [
    "LearnedPositionalEmbedding",
    "RelativePositionBias",
    "apply_rotary",
    "interleaved_to_halves",
    "relative_position_bucket",
    "sinusoidal_encoding",
    "sinusoidal_shift",
]


def _check_even_dim(name: str, dim: int) -> None:
    positive_int(name, dim)
    if dim % 2:
        raise ValueError(f"{name} must be even (sin/cos or rotation pairs), got {dim}")


def _check_base(base: float) -> None:
    if not (base > 1.0 and math.isfinite(base)):
        raise ValueError(f"base must be a finite float > 1, got {base}")


def _frequencies(dim: int, base: float) -> np.ndarray:
    r""":math:`\omega_i = \text{base}^{-2i/d}`, :math:`i = 0, \dots, d/2 - 1`, float64 numpy.

    The tables below are constants of ``(length, dim, base)``: they are computed in float64 numpy
    (exact to float32 rounding, and no XLA compilation per shape) and rounded once.
    """
    return base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)  # [d/2]


def sinusoidal_encoding(length: int, dim: int, base: float = 10000.0) -> Float[Array, "length dim"]:
    r"""The sinusoidal position encoding of Vaswani et al. (2017), interleaved sin/cos.

    .. math::
       PE_{p,\,2i} = \sin(p\, \omega_i), \qquad PE_{p,\,2i+1} = \cos(p\, \omega_i), \qquad
       \omega_i = \text{base}^{-2i/d}

    for positions :math:`p = 0, \dots,` ``length`` :math:`-1`, :math:`d` = ``dim``.

    Args:
      length: number of positions, positive.
      dim: encoding width :math:`d`, positive and even.
      base: the wavelength base (10000 in the paper), > 1.

    Returns:
      float32 ``[length, dim]``.

    Note:
      Interleaved, as in the paper. tensor2tensor and many diffusion codebases concatenate
      ``[sin, cos]`` halves instead; :func:`interleaved_to_halves` maps one to the other.

    References:
      Vaswani et al., *Attention Is All You Need*, 2017, https://arxiv.org/abs/1706.03762

    Derivation: derivations/04-positional-encoding.md
    """
    positive_int("length", length)
    _check_even_dim("dim", dim)
    _check_base(base)
    angles = np.arange(length)[:, None] * _frequencies(dim, base)[None, :]  # [L, d/2]
    pairs = np.stack([np.sin(angles), np.cos(angles)], axis=-1)  # [L, d/2, 2]
    return jnp.asarray(pairs.reshape(length, dim), jnp.float32)  # [L, d]: sin, cos, sin, ...


def sinusoidal_shift(offset: int, dim: int, base: float = 10000.0) -> Float[Array, "dim dim"]:
    r"""The fixed linear map :math:`T_k` with :math:`PE_{p+k} = T_k\, PE_p` for every :math:`p`.

    .. math::
       T_k = \operatorname{diag}_i \begin{pmatrix} \cos k\omega_i & \sin k\omega_i \\
       -\sin k\omega_i & \cos k\omega_i \end{pmatrix}

    (block diagonal over the pairs :math:`(2i, 2i+1)`), :math:`k` = ``offset``, by the angle
    addition formulas. It does not depend on :math:`p`: the property Vaswani et al. give for
    choosing sinusoids.

    Args:
      offset: the shift :math:`k` (any integer, negative allowed).
      dim: encoding width, positive and even.
      base: as in :func:`sinusoidal_encoding`.

    Returns:
      float32 ``[dim, dim]``, orthogonal.

    Example:
      >>> import jax.numpy as jnp
      >>> pe = sinusoidal_encoding(8, 4)
      >>> bool(jnp.allclose(pe[:6] @ sinusoidal_shift(2, 4).T, pe[2:], atol=1e-5))
      True

    Derivation: derivations/04-positional-encoding.md
    """
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise ValueError(f"offset must be an int, got {offset!r}")
    _check_even_dim("dim", dim)
    _check_base(base)
    angle = offset * _frequencies(dim, base)  # [d/2]
    cos, sin = np.cos(angle), np.sin(angle)
    blocks = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)  # [d/2, 2, 2]
    # block diagonal: entry ((i, a), (j, b)) is [i == j] blocks[i, a, b]
    shift = np.einsum("ij,iab->iajb", np.eye(dim // 2), blocks).reshape(dim, dim)  # [d, d]
    return jnp.asarray(shift, jnp.float32)


def interleaved_to_halves(x: Float[Array, "*batch dim"]) -> Float[Array, "*batch dim"]:
    r"""Reorder the last axis from interleaved pairs to halves: :math:`(a_0, b_0, a_1, b_1, \dots)
    \mapsto (a_0, a_1, \dots, b_0, b_1, \dots)`.

    Maps :func:`sinusoidal_encoding` to the ``concat([sin, cos])`` layout, and RoPE on interleaved
    pairs to RoPE on halves (GPT-NeoX/LLaMA layout): rotating halves of ``interleaved_to_halves(x)``
    equals ``interleaved_to_halves`` of rotating pairs of ``x``.

    Args:
      x: ``[..., dim]`` with ``dim`` even.

    Returns:
      ``[..., dim]``, the same values permuted.

    Derivation: derivations/04-positional-encoding.md
    """
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] % 2:
        raise ValueError(f"x must have an even last axis (dim), got shape {x.shape}")
    return jnp.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)  # [..., d]


class LearnedPositionalEmbedding(nn.Module):
    r"""A trained position table added to the inputs: :math:`y_{b p} = x_{b p} + E_p`.

    Attributes:
      max_length: rows of the table :math:`E` (longest sequence).
      init_std: standard deviation of the initial table (0.02 as in GPT-2).

    Note:
      Positions past ``max_length`` have no row: a learned table does not extrapolate, unlike
      the sinusoidal, relative and rotary encodings.

    References:
      Radford et al., *Language Models are Unsupervised Multitask Learners*, 2019,
      https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf

    Derivation: derivations/04-positional-encoding.md
    """

    max_length: int
    init_std: float = 0.02

    @nn.compact
    def __call__(
        self, x: Float[Array, "batch length features"]
    ) -> Float[Array, "batch length features"]:
        """Add rows ``0..length-1`` of the table to ``x`` (``[batch, length, features]``)."""
        positive_int("max_length", self.max_length)
        if x.ndim != 3:
            raise ValueError(f"x must have shape [batch, length, features], got {x.shape}")
        if x.shape[1] > self.max_length:
            raise ValueError(f"x has length {x.shape[1]} > max_length {self.max_length}")
        table = self.param(
            "embedding", nn.initializers.normal(self.init_std), (self.max_length, x.shape[-1])
        )  # [max_length, features]
        return x + table[None, : x.shape[1]].astype(x.dtype)  # [B, L, features]


def relative_position_bucket(
    relative_position: Int[Array, "*shape"],
    *,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> Int[Array, "*shape"]:
    r"""T5's bucket of a relative position :math:`r = j - i` (key minus query position).

    With :math:`B` buckets (:math:`B/2` per direction if bidirectional), :math:`n = |r|`
    (bidirectional; the sign picks the half) or :math:`n = \max(-r, 0)` (causal: future keys
    fall in bucket 0), and :math:`E = B'/2` exact buckets for :math:`B'` buckets per direction:

    .. math::
       \text{bucket}(n) = \begin{cases} n & n < E \\
       \min\!\Big(B' - 1,\ E + \Big\lfloor \frac{\log(n/E)}{\log(D/E)} (B' - E) \Big\rfloor\Big)
       & n \ge E \end{cases}

    with :math:`D` = ``max_distance``: exact for small distances, logarithmic up to :math:`D`,
    one shared bucket beyond.

    Args:
      relative_position: integer array of :math:`r = j - i`.
      bidirectional: encoder-style (both directions) or causal.
      num_buckets: :math:`B`, at least 4 (even if bidirectional).
      max_distance: :math:`D`, greater than the exact range.

    Returns:
      int32 buckets in :math:`[0, B)`, same shape.

    Example:
      >>> import jax.numpy as jnp
      >>> relative_position_bucket(jnp.array([-3, -1, 0, 1, 3]), num_buckets=8,
      ...                          max_distance=16).tolist()
      [2, 1, 0, 5, 6]

    References:
      Raffel et al., *Exploring the Limits of Transfer Learning with a Unified Text-to-Text
      Transformer*, 2019, https://arxiv.org/abs/1910.10683

    Derivation: derivations/04-positional-encoding.md
    """
    positive_int("num_buckets", num_buckets)
    positive_int("max_distance", max_distance)
    if num_buckets < 4 or (bidirectional and num_buckets % 2):
        raise ValueError(f"num_buckets must be >= 4 (and even if bidirectional), got {num_buckets}")
    relative_position = jnp.asarray(relative_position)
    if not jnp.issubdtype(relative_position.dtype, jnp.integer):
        raise TypeError(f"relative_position must be integer, got {relative_position.dtype}")
    per_direction = num_buckets // 2 if bidirectional else num_buckets
    max_exact = per_direction // 2
    if max_distance <= max_exact:
        raise ValueError(f"max_distance must exceed {max_exact}, got {max_distance}")
    n = -relative_position.astype(jnp.int32)
    if bidirectional:
        offset = jnp.where(n < 0, per_direction, 0)  # keys after the query use the upper half
        n = jnp.abs(n)
    else:
        offset = jnp.zeros_like(n)
        n = jnp.maximum(n, 0)
    log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(
        max_distance / max_exact
    )
    large = max_exact + (log_ratio * (per_direction - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, per_direction - 1)
    return offset + jnp.where(n < max_exact, n, large)


class RelativePositionBias(nn.Module):
    r"""T5's learned relative-position bias, one scalar per (bucket, head).

    .. math:: \beta_{h i j} = w_{\text{bucket}(j - i),\, h}

    added to the attention scores (``bias=`` of :func:`genjax.nn.attention.attention_weights`),
    with buckets from :func:`relative_position_bucket`. T5 style (log buckets), not Shaw et al.'s
    clipped distances.

    Attributes:
      num_heads: heads :math:`H`.
      num_buckets: buckets :math:`B`.
      max_distance: :math:`D`.
      bidirectional: encoder-style (``True``) or causal decoder (``False``).

    References:
      Raffel et al., *Exploring the Limits of Transfer Learning with a Unified Text-to-Text
      Transformer*, 2019, https://arxiv.org/abs/1910.10683

    Derivation: derivations/04-positional-encoding.md
    """

    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    bidirectional: bool = True

    @nn.compact
    def __call__(self, q_len: int, k_len: int) -> Float[Array, "1 heads q_len k_len"]:
        """The bias ``[1, heads, q_len, k_len]`` for queries ``0..q_len-1``, keys ``0..k_len-1``."""
        positive_int("q_len", q_len)
        positive_int("k_len", k_len)
        relative = jnp.arange(k_len)[None, :] - jnp.arange(q_len)[:, None]  # [Lq, Lk]: j - i
        buckets = relative_position_bucket(
            relative,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )  # [Lq, Lk]
        table = self.param(
            "bias", nn.initializers.normal(0.02), (self.num_buckets, self.num_heads)
        )  # [B, H]
        return jnp.transpose(table[buckets], (2, 0, 1))[None]  # [1, H, Lq, Lk]


def apply_rotary(
    x: Float[Array, "batch length heads head_dim"],
    positions: Int[Array, "*batch length"] | None = None,
    *,
    base: float = 10000.0,
) -> Float[Array, "batch length heads head_dim"]:
    r"""Rotary position embedding (RoPE): rotate each feature pair by :math:`p\,\omega_i`.

    .. math::
       \begin{pmatrix} x'_{2i} \\ x'_{2i+1} \end{pmatrix} =
       \begin{pmatrix} \cos p\omega_i & -\sin p\omega_i \\ \sin p\omega_i & \cos p\omega_i
       \end{pmatrix} \begin{pmatrix} x_{2i} \\ x_{2i+1} \end{pmatrix}, \qquad
       \omega_i = \text{base}^{-2i/d}

    with :math:`x` = ``x`` at position :math:`p` (from ``positions``). Applied to both queries
    and keys, :math:`R_m q \cdot R_n k = q \cdot R_{n-m} k` depends on :math:`n - m` only.

    Args:
      x: ``[batch, length, heads, head_dim]``, ``head_dim`` even.
      positions: integer ``[length]`` or ``[batch, length]``; default ``0..length-1``.
      base: frequency base, > 1.

    Returns:
      ``[batch, length, heads, head_dim]`` in ``x``'s dtype (rotated in float32).

    Note:
      Interleaved pairs as in Su et al.; GPT-NeoX and LLaMA rotate halves
      :math:`(x_i, x_{i + d/2})`, which is the same map after :func:`interleaved_to_halves`.

    References:
      Su et al., *RoFormer: Enhanced Transformer with Rotary Position Embedding*, 2021,
      https://arxiv.org/abs/2104.09864

    Derivation: derivations/04-positional-encoding.md
    """
    if x.ndim != 4:
        raise ValueError(f"x must have shape [batch, length, heads, head_dim], got {x.shape}")
    batch, length, _, head_dim = x.shape
    _check_even_dim("head_dim", head_dim)
    _check_base(base)
    if positions is None:
        positions = jnp.arange(length)[None, :]  # [1, L]
    positions = jnp.asarray(positions)
    if positions.ndim == 1:
        positions = positions[None, :]  # [1, L]
    if positions.ndim != 2 or positions.shape[1] != length or positions.shape[0] not in (1, batch):
        raise ValueError(
            f"positions must have shape [length] or [batch, length] = [{batch}, {length}], "
            f"got {positions.shape}"
        )
    omega = jnp.asarray(_frequencies(head_dim, base), jnp.float32)[None, None, :]  # [1, 1, d/2]
    angles = positions.astype(jnp.float32)[..., None] * omega  # [b, L, d/2]
    cos = jnp.cos(angles)[:, :, None, :]  # [b, L, 1, d/2]
    sin = jnp.sin(angles)[:, :, None, :]  # [b, L, 1, d/2]
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], head_dim // 2, 2)  # [B, L, H, d/2, 2]
    first, second = pairs[..., 0], pairs[..., 1]  # [B, L, H, d/2] each
    rotated = jnp.stack([first * cos - second * sin, first * sin + second * cos], -1)
    return rotated.reshape(x.shape).astype(x.dtype)  # [B, L, H, d]
