r"""Scaled dot-product attention, its masks, and multi-head attention.

Arrays use jax's layout: ``query`` ``[batch, q_len, heads, head_dim]``, ``key``
``[batch, k_len, kv_heads, head_dim]``, ``value`` ``[batch, k_len, kv_heads, v_dim]``; weights
are ``[batch, heads, q_len, k_len]``. As in ``jax.nn.dot_product_attention``, the batch axis may
be left out (``[length, heads, head_dim]`` inputs, weights ``[heads, q_len, k_len]``), and
``heads`` may be a multiple of ``kv_heads`` (grouped-query attention; multi-query when
``kv_heads`` is 1): query head :math:`h` reads key/value head :math:`\lfloor h / G \rfloor`,
:math:`G` = ``heads // kv_heads``. Masks are boolean with ``True`` = attend, of rank at most 4,
aligned from the right with ``[batch, heads, q_len, k_len]`` (missing leading axes are added,
size 1 axes broadcast). :func:`causal_mask` and :func:`padding_mask` return rank-4 masks, so they
combine with ``&``; ``is_causal=True`` applies the causal mask without building it.

Derivation: derivations/03-attention.md
"""

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from genjax._checks import positive_int
from genjax.nn.init import xavier_uniform

__all__ = [
    "AttentionFn",
    "MultiHeadAttention",
    "attention_scores",
    "attention_weights",
    "causal_mask",
    "padding_mask",
    "scaled_dot_product_attention",
]

_WEIGHTS_AXES = ("batch", "heads", "q_len", "k_len")


def causal_mask(length: int) -> Bool[Array, "1 1 length length"]:
    r"""The autoregressive mask: query :math:`i` attends to keys :math:`j \le i`.

    .. math:: M_{ij} = [\, j \le i \,]

    Args:
      length: sequence length :math:`L`, positive.

    Returns:
      Boolean ``[1, 1, length, length]``, lower triangular (``True`` = attend).

    Derivation: derivations/03-attention.md
    """
    positive_int("length", length)
    idx = jnp.arange(length)
    return (idx[None, :] <= idx[:, None])[None, None]  # [1, 1, L, L]


def padding_mask(lengths: Int[Array, " batch"], max_length: int) -> Bool[Array, "batch 1 1 k_len"]:
    r"""A key-padding mask: in row :math:`b`, keys at positions :math:`j <` ``lengths[b]`` are real.

    .. math:: M_{b j} = [\, j < \ell_b \,]

    Args:
      lengths: ``[batch]`` integer valid lengths :math:`\ell_b` (0 gives an all-masked row, whose
        attention output is zero).
      max_length: padded length (the keys' ``k_len``), positive.

    Returns:
      Boolean ``[batch, 1, 1, max_length]``, broadcasting over heads and queries.

    Derivation: derivations/03-attention.md
    """
    positive_int("max_length", max_length)
    lengths = jnp.asarray(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must have shape [batch], got {lengths.shape}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths must be an integer array, got dtype {lengths.dtype}")
    return (jnp.arange(max_length)[None, :] < lengths[:, None])[:, None, None, :]  # [B, 1, 1, K]


def attention_scores(
    query: Float[Array, "*batch q_len heads head_dim"],
    key: Float[Array, "*batch k_len kv_heads head_dim"],
    *,
    bias: Float[Array, "..."] | None = None,
    scale: float | None = None,
) -> Float[Array, "*batch heads q_len k_len"]:
    r"""The attention logits: scaled query–key dot products plus an optional bias.

    .. math::
       s_{b h i j} = \tau \sum_{c} q_{b i h c}\, k_{b j \lfloor h/G \rfloor c} + \beta_{b h i j}

    with :math:`q` = ``query``, :math:`k` = ``key``, :math:`G` = ``heads // kv_heads``,
    :math:`\tau` = ``scale`` (default :math:`1/\sqrt{d_k}`, :math:`d_k` = ``head_dim``, which
    makes :math:`\operatorname{Var}s = 1` for unit-variance independent :math:`q, k`) and
    :math:`\beta` = ``bias``.

    Args:
      query: ``[batch, q_len, heads, head_dim]`` or ``[q_len, heads, head_dim]``.
      key: ``[batch, k_len, kv_heads, head_dim]`` (same rank as ``query``), ``kv_heads``
        dividing ``heads``.
      bias: additive float bias broadcastable to ``[batch, heads, q_len, k_len]`` (e.g.
        :class:`genjax.nn.positional.RelativePositionBias`).
      scale: :math:`\tau`, positive; ``None`` means :math:`1/\sqrt{d_k}`.

    Returns:
      float32 ``[batch, heads, q_len, k_len]`` (``[heads, q_len, k_len]`` for unbatched inputs),
      accumulated in float32 whatever the input dtype.

    References:
      Vaswani et al., *Attention Is All You Need*, 2017, https://arxiv.org/abs/1706.03762

    Derivation: derivations/03-attention.md
    """
    _check_qkv(query, key, None)
    if query.ndim == 3:
        return attention_scores(query[None], key[None], bias=bias, scale=scale)[0]
    batch, q_len, heads, head_dim = query.shape
    k_len, kv_heads = key.shape[1:3]
    bias = _as_rank4("bias", bias, (batch, heads, q_len, k_len))
    # scaling q (L·d products) is cheaper than scaling the scores (L² products)
    query = _heads_first(query * jnp.asarray(_scale(scale, head_dim), query.dtype))  # [B, H, Lq, D]
    query = query.reshape(batch, kv_heads, -1, head_dim)  # [B, K, G·Lq, D]: head h = k·G + g
    scores = jnp.einsum(
        "bkqd,bkjd->bkqj", query, _heads_first(key), preferred_element_type=jnp.float32
    )  # [B, K, G·Lq, Lk]
    scores = scores.reshape(batch, heads, q_len, k_len)  # [B, H, Lq, Lk]
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)  # [B, H, Lq, Lk]
    return scores


def attention_weights(
    query: Float[Array, "*batch q_len heads head_dim"],
    key: Float[Array, "*batch k_len kv_heads head_dim"],
    *,
    mask: Bool[Array, "..."] | None = None,
    bias: Float[Array, "..."] | None = None,
    scale: float | None = None,
    is_causal: bool = False,
) -> Float[Array, "*batch heads q_len k_len"]:
    r"""Attention weights: a softmax over the unmasked keys of the attention scores.

    .. math::
       A_{b h i j} = \frac{M_{b h i j}\, e^{s_{b h i j}}}{\sum_{j'} M_{b h i j'}\, e^{s_{b h i j'}}}

    with :math:`s` the scores of :func:`attention_scores` (same ``bias``, ``scale``) and
    :math:`M` = ``mask`` (all ones if ``None``), and with ``is_causal`` also
    :math:`M_{bhij} = 0` for :math:`j > i`. A row whose keys are all masked is 0 (the
    :math:`0/0` above is defined as 0), and a masked key gets weight exactly 0.

    Args:
      query: ``[batch, q_len, heads, head_dim]`` or ``[q_len, heads, head_dim]``.
      key: ``[batch, k_len, kv_heads, head_dim]`` (same rank as ``query``).
      mask: boolean, ``True`` = attend, broadcastable to ``[batch, heads, q_len, k_len]``.
      bias: additive float bias broadcastable to ``[batch, heads, q_len, k_len]``; finite values
        (exclude keys with ``mask``, not with an infinite bias).
      scale: :math:`\tau`, positive; ``None`` means :math:`1/\sqrt{d_k}`.
      is_causal: also mask keys :math:`j > i` (jax's convention for ``q_len != k_len``: the
        lower triangle of the ``[q_len, k_len]`` matrix, aligned at the top left).

    Returns:
      float32 ``[batch, heads, q_len, k_len]`` (``[heads, q_len, k_len]`` for unbatched inputs);
      each row sums to 1 (or is all 0).

    Note:
      The softmax runs in float32 whatever the input dtype. ``jax.nn.dot_product_attention``
      gives a fully masked row uniform weights (its mask is a large negative number); here it
      gives zeros.

    Derivation: derivations/03-attention.md
    """
    _check_qkv(query, key, None)
    if query.ndim == 3:
        weights = attention_weights(
            query[None], key[None], mask=mask, bias=bias, scale=scale, is_causal=is_causal
        )
        return weights[0]
    mask = _full_mask(mask, is_causal, query.shape[:3], key.shape[1])  # [b|1, h|1, Lq|1, Lk]
    scores = attention_scores(query, key, bias=bias, scale=scale)  # [B, H, Lq, Lk]
    return jax.nn.softmax(scores, axis=-1, where=mask)  # [B, H, Lq, Lk], zeros where masked


def scaled_dot_product_attention(
    query: Float[Array, "*batch q_len heads head_dim"],
    key: Float[Array, "*batch k_len kv_heads head_dim"],
    value: Float[Array, "*batch k_len kv_heads v_dim"],
    *,
    mask: Bool[Array, "..."] | None = None,
    bias: Float[Array, "..."] | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
) -> Float[Array, "*batch q_len heads v_dim"]:
    r"""Scaled dot-product attention: each query's weighted mean of the values.

    .. math::
       o_{b i h} = \sum_j A_{b h i j}\, v_{b j \lfloor h/G \rfloor}, \qquad
       A = \operatorname{softmax}_j\!\big(\tau\, q k^\top + \beta\big) \text{ over unmasked } j,

    with :math:`A` from :func:`attention_weights` (same ``mask``, ``bias``, ``scale``,
    ``is_causal``), :math:`v` = ``value``, :math:`G` = ``heads // kv_heads``. With dropout,
    :math:`A` is replaced by :math:`A \odot \xi / (1-p)`,
    :math:`\xi_{bhij} \sim \text{Bernoulli}(1-p)`, :math:`p` = ``dropout_rate``.

    Args:
      query: ``[batch, q_len, heads, head_dim]`` or ``[q_len, heads, head_dim]``.
      key: ``[batch, k_len, kv_heads, head_dim]`` (same rank as ``query``); ``heads`` must be a
        multiple of ``kv_heads`` (grouped-query attention, multi-query for ``kv_heads = 1``).
      value: ``[batch, k_len, kv_heads, v_dim]``.
      mask: boolean, ``True`` = attend, broadcastable to ``[batch, heads, q_len, k_len]``.
      bias: additive float bias broadcastable to ``[batch, heads, q_len, k_len]``.
      scale: :math:`\tau`; ``None`` means :math:`1/\sqrt{d_k}`.
      is_causal: also mask keys :math:`j > i` (as ``jax.nn.dot_product_attention``).
      dropout_rate: :math:`p \in [0, 1)`, dropout on the weights (0 = none).
      dropout_key: PRNG key for the dropout draw; required when ``dropout_rate > 0``.

    Returns:
      ``[batch, q_len, heads, v_dim]`` (``[q_len, heads, v_dim]`` for unbatched inputs) in
      ``value``'s dtype; a query whose keys are all masked gives 0.

    Note:
      Same layout and result as ``jax.nn.dot_product_attention`` except for fully masked rows
      (0 here, the mean of the values there). The two products run on
      ``[batch, kv_heads, G·length, dim]`` copies of the operands (row-major matrix products
      batched over leading axes, the query heads that share a key/value head stacked along the
      rows); on the ``[batch, length, heads, dim]`` operands XLA on CPU computes the value
      product transposed instead (derivations/03-attention.md, section 6). The
      dropout key is a keyword, not the first argument, because the first three arguments are
      the attention's own (query, key, value), as in jax and flax.

    References:
      Vaswani et al., *Attention Is All You Need*, 2017, https://arxiv.org/abs/1706.03762;
      Ainslie et al., *GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
      Checkpoints*, 2023, https://arxiv.org/abs/2305.13245

    Derivation: derivations/03-attention.md
    """
    _check_qkv(query, key, value)
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    if dropout_rate > 0.0 and dropout_key is None:
        raise ValueError("dropout_key is required when dropout_rate > 0")
    options = {"mask": mask, "bias": bias, "scale": scale, "is_causal": is_causal}
    if query.ndim == 3:
        out = scaled_dot_product_attention(
            query[None],
            key[None],
            value[None],
            **options,
            dropout_rate=dropout_rate,
            dropout_key=dropout_key,
        )
        return out[0]
    weights = attention_weights(query, key, **options)  # [B, H, Lq, Lk]
    if dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_key, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)  # [B, H, Lq, Lk]
    batch, q_len, heads, _ = query.shape
    k_len, kv_heads = key.shape[1:3]
    weights = weights.astype(value.dtype).reshape(batch, kv_heads, -1, k_len)  # [B, K, G·Lq, Lk]
    out = jnp.einsum("bkqj,bkjd->bkqd", weights, _heads_first(value))  # [B, K, G·Lq, Dv]
    return _heads_first(out.reshape(batch, heads, q_len, -1))  # [B, Lq, H, Dv]


AttentionFn = Callable[..., jax.Array]


class MultiHeadAttention(nn.Module):
    r"""Multi-head attention: project, attend per head, concatenate, project back.

    .. math::
       \operatorname{MHA}(x_q, x_{kv}) = \big[\,\operatorname{attn}(x_q W^Q_h,
       x_{kv} W^K_{\lfloor h/G \rfloor}, x_{kv} W^V_{\lfloor h/G \rfloor})\,\big]_{h=1}^{H} W^O

    with :math:`H` = ``num_heads``, :math:`G` = ``num_heads // num_kv_heads`` (1 by default:
    one key/value head per query head), each head of size ``head_dim`` (default
    ``features // num_heads``), and :math:`\operatorname{attn}` = ``attention_fn``
    (:func:`scaled_dot_product_attention`). Self-attention: call with ``inputs_q`` alone;
    cross-attention: also pass ``inputs_kv``.

    Attributes:
      num_heads: :math:`H`.
      features: model width of the queries' projections and of the output; ``None`` means the
        last axis of ``inputs_q``.
      head_dim: per-head size; ``None`` means ``features // num_heads`` (which must divide).
      out_features: output width; ``None`` means ``features``.
      num_kv_heads: key/value heads, dividing ``num_heads`` (grouped-query attention; 1 is
        multi-query attention); ``None`` means ``num_heads``.
      dropout_rate: dropout on the attention weights (uses the ``"dropout"`` RNG stream).
      use_bias: biases in the four projections.
      kernel_init: initialiser of the projections (Xavier uniform by default).
      attention_fn: ``fn(q, k, v, *, mask, bias, dropout_rate, dropout_key) -> out`` in the
        layout of :func:`scaled_dot_product_attention`; swap in another implementation to compare.
      dtype: computation dtype (``None``: inferred from the inputs); parameters stay float32.

    Note:
      Unlike flax's ``MultiHeadDotProductAttention``, the output projection is an explicit
      ``[heads, head_dim, out]`` kernel named ``out``, and fully masked queries give 0.

    References:
      Vaswani et al., *Attention Is All You Need*, 2017, https://arxiv.org/abs/1706.03762;
      Ainslie et al., 2023, https://arxiv.org/abs/2305.13245

    Derivation: derivations/03-attention.md
    """

    num_heads: int
    features: int | None = None
    head_dim: int | None = None
    out_features: int | None = None
    num_kv_heads: int | None = None
    dropout_rate: float = 0.0
    use_bias: bool = True
    kernel_init: Callable[..., jax.Array] = xavier_uniform()
    attention_fn: AttentionFn = scaled_dot_product_attention
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(
        self,
        inputs_q: Float[Array, "batch q_len d_q"],
        inputs_kv: Float[Array, "batch k_len d_kv"] | None = None,
        *,
        mask: Bool[Array, "..."] | None = None,
        bias: Float[Array, "..."] | None = None,
        deterministic: bool = True,
    ) -> Float[Array, "batch q_len out"]:
        """Attend from ``inputs_q`` to ``inputs_kv`` (default: ``inputs_q``, self-attention).

        Args:
          inputs_q: ``[batch, q_len, d_q]``.
          inputs_kv: ``[batch, k_len, d_kv]`` or ``None``.
          mask: boolean, ``True`` = attend, broadcastable to ``[batch, heads, q_len, k_len]``.
          bias: additive bias broadcastable to ``[batch, heads, q_len, k_len]``.
          deterministic: ``False`` applies weight dropout (needs the ``"dropout"`` RNG).

        Returns:
          ``[batch, q_len, out_features]``.
        """
        if inputs_kv is None:
            inputs_kv = inputs_q
        for name, x in (("inputs_q", inputs_q), ("inputs_kv", inputs_kv)):
            if x.ndim != 3:
                raise ValueError(f"{name} must have shape [batch, length, features], got {x.shape}")
        features = self.features or inputs_q.shape[-1]
        head_dim = self.head_dim
        if head_dim is None:
            if features % self.num_heads:
                raise ValueError(
                    f"num_heads ({self.num_heads}) must divide features ({features}) "
                    "when head_dim is not given"
                )
            head_dim = features // self.num_heads
        kv_heads = self.num_kv_heads or self.num_heads
        if self.num_heads % kv_heads:
            raise ValueError(f"num_kv_heads ({kv_heads}) must divide num_heads ({self.num_heads})")

        def project(name, x, heads):
            return nn.DenseGeneral(
                (heads, head_dim),
                use_bias=self.use_bias,
                kernel_init=self.kernel_init,
                dtype=self.dtype,
                name=name,
            )(x)  # [B, L, heads, head_dim]

        q = project("query", inputs_q, self.num_heads)  # [B, Lq, H, head_dim]
        k = project("key", inputs_kv, kv_heads)  # [B, Lk, K, head_dim]
        v = project("value", inputs_kv, kv_heads)  # [B, Lk, K, head_dim]
        dropout_rate = 0.0 if deterministic else self.dropout_rate
        dropout_key = self.make_rng("dropout") if dropout_rate > 0.0 else None
        out = self.attention_fn(
            q, k, v, mask=mask, bias=bias, dropout_rate=dropout_rate, dropout_key=dropout_key
        )  # [B, Lq, H, head_dim]
        return nn.DenseGeneral(
            self.out_features or features,
            axis=(-2, -1),
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            name="out",
        )(out)  # [B, Lq, out_features]


def _heads_first(x: jax.Array) -> jax.Array:
    """Swap the length and heads axes: ``[b, l, h, d] <-> [b, h, l, d]``.

    The products then run as row-major ``[l, d]`` matrix products batched over the leading
    ``(b, h)``; XLA on CPU lays out an einsum over the ``[b, l, h, d]`` operands directly with a
    transposed (``[d, l]``) value and output (benchmarks/bench_attention.py compares the two).
    """
    return jnp.swapaxes(x, 1, 2)


def _scale(scale: float | None, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive finite float or None, got {scale}")
    return float(scale)


def _check_qkv(query, key, value) -> None:
    """Ranks and matching axes of query/key/value, with messages naming the argument."""
    if query.ndim not in (3, 4) or key.ndim != query.ndim:
        raise ValueError(
            "query must have shape [batch, length, heads, head_dim] or [length, heads, head_dim], "
            f"with key of the same rank; got query {query.shape}, key {key.shape}"
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query and key head dims differ: query head_dim {query.shape[-1]}, "
            f"key head_dim {key.shape[-1]}"
        )
    if query.shape[:-3] != key.shape[:-3]:
        raise ValueError(f"query {query.shape} and key {key.shape} must agree on batch (axis 0)")
    if query.shape[-2] % key.shape[-2]:
        raise ValueError(
            f"query heads ({query.shape[-2]}) must be a multiple of key/value heads "
            f"({key.shape[-2]})"
        )
    if value is not None and value.shape[:-1] != key.shape[:-1]:
        raise ValueError(
            f"value {value.shape} must match key {key.shape} on batch, length and heads"
        )


def _full_mask(mask, is_causal: bool, qkv_axes: tuple[int, int, int], k_len: int):
    """The boolean ``mask`` at rank 4, and'ed with the causal mask when ``is_causal``."""
    batch, q_len, heads = qkv_axes
    mask = _as_rank4("mask", mask, (batch, heads, q_len, k_len))
    if mask is not None and mask.dtype != jnp.bool_:
        raise TypeError(f"mask must be boolean (True = attend), got dtype {mask.dtype}")
    if not is_causal:
        return mask
    causal = jnp.tril(jnp.ones((q_len, k_len), jnp.bool_))[None, None]  # [1, 1, Lq, Lk]
    return causal if mask is None else mask & causal


def _as_rank4(name: str, x, full: tuple[int, int, int, int]):
    """``x`` with leading unit axes added to rank 4, checked to broadcast to ``full``."""
    if x is None:
        return None
    x = jnp.asarray(x)
    if x.ndim > 4:
        raise ValueError(
            f"{name} must have rank <= 4 and broadcast to [batch, heads, q_len, k_len] = "
            f"{list(full)}, got shape {x.shape}"
        )
    x = x.reshape((1,) * (4 - x.ndim) + x.shape)  # [b|1, h|1, q|1, k|1]
    for axis, (size, want) in enumerate(zip(x.shape, full, strict=True)):
        if size not in (1, want):
            raise ValueError(
                f"{name} of shape {x.shape} does not broadcast to [batch, heads, q_len, k_len] = "
                f"{list(full)}: axis {_WEIGHTS_AXES[axis]} has size {size}"
            )
    return x
