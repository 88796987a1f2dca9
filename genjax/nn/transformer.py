r"""Pre-LN Transformer blocks, an encoder–decoder and a decoder-only language model.

A pre-LN block normalises *before* each sub-layer and adds the sub-layer's output to the
residual stream (Xiong et al., 2020), so the stream itself is never normalised and gradients
reach every layer through the identity path:

.. math::
   x \leftarrow x + \operatorname{MHA}(\operatorname{LN}(x)), \qquad
   x \leftarrow x + \operatorname{MLP}(\operatorname{LN}(x)),

with a final LN before the output projection. The decoder block adds cross-attention to an
encoder memory between the two. Attention is :class:`genjax.nn.attention.MultiHeadAttention`,
positions come from :mod:`genjax.nn.positional`.

Pure functions: :func:`token_nll` (per-token negative log-likelihood from logits, via
``log_softmax``), :func:`rotary_attention`, :func:`generate` (autoregressive sampling / greedy
decoding with ``jax.lax.scan``), :func:`pool_at_last` (a padded sequence's last real position).
:class:`TextEncoder` is the bidirectional encoder of padded token sequences shared by the text
families (CLIP's text tower, the conditioning of text-to-image diffusion).

Derivation: derivations/03-attention.md, derivations/04-positional-encoding.md
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from genjax._checks import is_concrete, one_of, positive_int
from genjax.nn.attention import (
    MultiHeadAttention,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
)
from genjax.nn.init import xavier_uniform
from genjax.nn.positional import LearnedPositionalEmbedding, apply_rotary, sinusoidal_encoding

__all__ = [
    "MLP",
    "POSITIONAL",
    "DecoderBlock",
    "DecoderOnlyTransformer",
    "EncoderBlock",
    "EncoderDecoderTransformer",
    "TextEncoder",
    "generate",
    "pool_at_last",
    "rotary_attention",
    "token_nll",
]

POSITIONAL = ("sinusoidal", "learned", "rotary")  #: the ``positional`` options of the models


def rotary_attention(
    query: Float[Array, "batch q_len heads head_dim"],
    key: Float[Array, "batch k_len heads head_dim"],
    value: Float[Array, "batch k_len heads v_dim"],
    **kwargs,
) -> Float[Array, "batch q_len heads v_dim"]:
    r"""Scaled dot-product attention with RoPE on queries and keys.

    .. math:: o = \operatorname{attn}(R_p\, q,\ R_p\, k,\ v)

    with :math:`R_p` = :func:`genjax.nn.positional.apply_rotary` at positions ``0..length-1``
    and :math:`\operatorname{attn}` = :func:`genjax.nn.attention.scaled_dot_product_attention`
    (``kwargs``: ``mask``, ``bias``, ``scale``, ``dropout_rate``, ``dropout_key``). Pass it as
    ``MultiHeadAttention(attention_fn=rotary_attention)`` for self-attention.

    Args:
      query: ``[batch, q_len, heads, head_dim]``.
      key: ``[batch, k_len, heads, head_dim]``.
      value: ``[batch, k_len, heads, v_dim]``.
      **kwargs: forwarded to :func:`~genjax.nn.attention.scaled_dot_product_attention`.

    Returns:
      ``[batch, q_len, heads, v_dim]``.

    References:
      Su et al., *RoFormer: Enhanced Transformer with Rotary Position Embedding*, 2021,
      https://arxiv.org/abs/2104.09864

    Derivation: derivations/04-positional-encoding.md
    """
    return scaled_dot_product_attention(apply_rotary(query), apply_rotary(key), value, **kwargs)


def token_nll(
    logits: Float[Array, "*batch length vocab"], targets: Int[Array, "*batch length"]
) -> Float[Array, "*batch length"]:
    r"""Per-token negative log-likelihood in nats: :math:`-\log \operatorname{softmax}(z_t)_{y_t}`.

    .. math:: \ell_t = \log\sum_v e^{z_{t v}} - z_{t y_t}

    with :math:`z` = ``logits`` and :math:`y` = ``targets``. Divide by :math:`\ln 2` for bits.

    Args:
      logits: ``[..., length, vocab]`` unnormalised scores.
      targets: ``[..., length]`` integer ids in ``[0, vocab)``.

    Returns:
      float32 ``[..., length]``.

    Derivation: derivations/03-attention.md
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {logits.shape} must be targets {targets.shape} plus a vocab axis")
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [..., L, V]
    return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # [..., L]


def generate(
    key: jax.Array,
    logits_fn: Callable[[Int[Array, "batch inputs"]], Float[Array, "batch inputs vocab"]],
    prompt: Int[Array, "batch prompt"],
    num_new: int,
    *,
    temperature: float = 1.0,
) -> Int[Array, "batch total"]:
    r"""Autoregressive generation: append ``num_new`` tokens drawn from the model, one at a time.

    .. math::
       y_t \sim \operatorname{Categorical}\big(\operatorname{softmax}(z_{t-1} / T)\big),
       \qquad t = P, \dots, P + \text{num\_new} - 1

    with :math:`z` = ``logits_fn`` of the buffer, :math:`P` the prompt length and :math:`T` =
    ``temperature``; :math:`T = 0` takes the argmax (greedy decoding). The buffer of length
    :math:`P` + ``num_new`` is fixed, so one compiled step serves every position
    (``jax.lax.scan``); ``logits_fn`` sees all but the buffer's last token (which is never an
    input) and must be causal (position :math:`t-1` ignores later ones). It recomputes the whole
    prefix each step: :math:`O(L)` model calls, no key-value cache.

    Args:
      key: PRNG key (unused when ``temperature == 0``).
      logits_fn: ``tokens [batch, total - 1] -> logits [batch, total - 1, vocab]``, causal.
      prompt: ``[batch, P]`` integer ids, ``P >= 1`` (e.g. a start token).
      num_new: tokens to append, positive.
      temperature: :math:`T \ge 0`.

    Returns:
      int32 ``[batch, P + num_new]``: the prompt followed by the generated tokens.

    Derivation: derivations/03-attention.md
    """
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must have shape [batch, P] with P >= 1, got {prompt.shape}")
    positive_int("num_new", num_new)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    batch, p = prompt.shape
    buffer = jnp.zeros((batch, p + num_new), jnp.int32).at[:, :p].set(prompt)  # [B, P + n]

    def step(buffer, t):
        logits = logits_fn(buffer[:, :-1])  # [B, P + n - 1, V]
        last = jax.lax.dynamic_index_in_dim(logits, t - 1, axis=1, keepdims=False)  # [B, V]
        if temperature == 0:
            token = jnp.argmax(last, axis=-1)
        else:
            token = jax.random.categorical(jax.random.fold_in(key, t), last / temperature)
        buffer = jax.lax.dynamic_update_index_in_dim(
            buffer, token.astype(jnp.int32), t, axis=1
        )  # [B, P + n]
        return buffer, None

    buffer, _ = jax.lax.scan(step, buffer, jnp.arange(p, p + num_new))
    return buffer


class MLP(nn.Module):
    r"""Position-wise feed-forward: :math:`W_2\,\operatorname{GELU}(W_1 x + b_1) + b_2`.

    Attributes:
      hidden: width of :math:`W_1`'s output.
      dropout_rate: dropout after :math:`W_2` (``"dropout"`` RNG stream).

    Derivation: derivations/03-attention.md
    """

    hidden: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: Float[Array, "*batch features"], *, deterministic: bool = True):
        h = nn.Dense(self.hidden, kernel_init=xavier_uniform())(x)  # [..., hidden]
        h = nn.Dense(x.shape[-1], kernel_init=xavier_uniform())(nn.gelu(h))  # [..., features]
        return nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)


class _PreLNBlock(nn.Module):
    """The fields shared by :class:`EncoderBlock` and :class:`DecoderBlock`."""

    num_heads: int
    mlp_ratio: int = 4
    dropout_rate: float = 0.0
    attention_fn: Callable[..., jax.Array] = scaled_dot_product_attention


class EncoderBlock(_PreLNBlock):
    r"""Pre-LN encoder block: :math:`x + \operatorname{MHA}(\operatorname{LN}x)`, then
    :math:`x + \operatorname{MLP}(\operatorname{LN}x)`.

    Attributes:
      num_heads: attention heads.
      mlp_ratio: MLP hidden width over the model width.
      dropout_rate: dropout on attention weights and on each sub-layer's output.
      attention_fn: the attention of :class:`~genjax.nn.attention.MultiHeadAttention`.

    References:
      Xiong et al., *On Layer Normalization in the Transformer Architecture*, 2020,
      https://arxiv.org/abs/2002.04745

    Derivation: derivations/03-attention.md
    """

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "batch length features"],
        *,
        deterministic: bool = True,
        mask: Bool[Array, "..."] | None = None,
    ) -> Float[Array, "batch length features"]:
        return _pre_ln_block(self, x, mask, deterministic=deterministic)  # [B, L, D]


class DecoderBlock(_PreLNBlock):
    r"""Pre-LN decoder block: masked self-attention, cross-attention to ``memory`` (if given),
    MLP, each as :math:`x \leftarrow x + f(\operatorname{LN}x)`.

    Attributes:
      num_heads, mlp_ratio, dropout_rate: as :class:`EncoderBlock`.
      attention_fn: the self-attention's function (e.g. :func:`rotary_attention`); the
        cross-attention uses plain scaled dot-product attention.

    References:
      Vaswani et al., *Attention Is All You Need*, 2017, https://arxiv.org/abs/1706.03762

    Derivation: derivations/03-attention.md
    """

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "batch tgt_length features"],
        memory: Float[Array, "batch src_length mem_features"] | None = None,
        *,
        self_mask: Bool[Array, "..."] | None = None,
        memory_mask: Bool[Array, "..."] | None = None,
        deterministic: bool = True,
    ) -> Float[Array, "batch tgt_length features"]:
        return _pre_ln_block(
            self,
            x,
            self_mask,
            memory,
            memory_mask,
            deterministic=deterministic,
            self_attention_name="self_attention",
        )  # [B, T, D]


def _pre_ln_block(
    block: _PreLNBlock,
    x: jax.Array,
    self_mask: jax.Array | None,
    memory: jax.Array | None = None,
    memory_mask: jax.Array | None = None,
    *,
    deterministic: bool,
    self_attention_name: str | None = None,
) -> jax.Array:
    """Self-attention, cross-attention to ``memory`` (if given) and MLP, each
    ``x + f(LN(x))``, with the submodules of ``block`` (called from its compact ``__call__``, so
    they are named as if written inline: ``self_attention_name`` or ``MultiHeadAttention_0``,
    ``cross_attention``, ``MLP_0``, ``LayerNorm_0..2``)."""
    drop = nn.Dropout(block.dropout_rate)
    attention = MultiHeadAttention(
        block.num_heads,
        dropout_rate=block.dropout_rate,
        attention_fn=block.attention_fn,
        name=self_attention_name,
    )
    x = _pre_ln_residual(x, attention, mask=self_mask, deterministic=deterministic, drop=drop)
    if memory is not None:
        cross = MultiHeadAttention(
            block.num_heads, dropout_rate=block.dropout_rate, name="cross_attention"
        )
        x = _pre_ln_residual(
            x, cross, memory, mask=memory_mask, deterministic=deterministic, drop=drop
        )  # [B, L, D]
    mlp = MLP(block.mlp_ratio * x.shape[-1], block.dropout_rate)
    return _pre_ln_residual(x, mlp, deterministic=deterministic)  # [B, L, D]


def _pre_ln_residual(
    x: jax.Array,
    sublayer: nn.Module,
    *args,
    deterministic: bool,
    drop: nn.Dropout | None = None,
    **kwargs,
) -> jax.Array:
    """``x + drop(sublayer(LN(x), *args, **kwargs))``, one pre-LN sub-layer.

    Called inside a block's compact ``__call__``, so the ``LayerNorm`` made here is the block's
    own submodule (named in creation order, as if written inline).
    """
    h = sublayer(nn.LayerNorm()(x), *args, deterministic=deterministic, **kwargs)  # [B, L, D]
    return x + (h if drop is None else drop(h, deterministic=deterministic))


class _Embedding(nn.Module):
    """Token embedding plus positions of the chosen kind (rotary adds none here)."""

    vocab_size: int
    features: int
    max_length: int
    positional: str

    @nn.compact
    def __call__(self, tokens: Int[Array, "batch length"]) -> Float[Array, "batch length features"]:
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [batch, length], got {tokens.shape}")
        if tokens.shape[1] > self.max_length:
            raise ValueError(f"tokens have length {tokens.shape[1]} > max_length {self.max_length}")
        # unit-variance token vectors: the same scale as the sinusoidal table's entries
        x = nn.Embed(self.vocab_size, self.features, embedding_init=nn.initializers.normal(1.0))(
            tokens
        )  # [B, L, D]
        if self.positional == "sinusoidal":
            return x + sinusoidal_encoding(tokens.shape[1], self.features)[None]
        if self.positional == "learned":
            return LearnedPositionalEmbedding(self.max_length, init_std=1.0)(x)
        return x


def _check_config(positional: str, features: int, num_heads: int) -> None:
    one_of("positional", positional, POSITIONAL)
    if features % num_heads:
        raise ValueError(f"num_heads ({num_heads}) must divide features ({features})")


class DecoderOnlyTransformer(nn.Module):
    r"""A GPT-style language model: embed, :math:`N` causal pre-LN decoder blocks, LN, logits.

    .. math::
       p(y_t \mid y_{<t}) = \operatorname{softmax}\big(W_o\,\operatorname{LN}(h^{(N)}_t)\big),
       \qquad h^{(0)} = E[y] + P

    with :math:`E` the token embedding and :math:`P` the positions (``positional``: sinusoidal,
    learned, or rotary inside attention). Self-attention uses
    :func:`~genjax.nn.attention.causal_mask`, so logits at :math:`t` see tokens :math:`\le t`.

    Attributes:
      vocab_size: number of token ids.
      max_length: longest sequence.
      features: model width :math:`D`.
      num_layers: :math:`N`.
      num_heads: heads per attention (must divide :math:`D`).
      mlp_ratio: MLP width over :math:`D`.
      dropout_rate: dropout rate (``"dropout"`` RNG stream, when ``deterministic=False``).
      positional: ``"sinusoidal"``, ``"learned"`` or ``"rotary"``.

    References:
      Radford et al., *Language Models are Unsupervised Multitask Learners*, 2019,
      https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf

    Derivation: derivations/03-attention.md, derivations/04-positional-encoding.md
    """

    vocab_size: int
    max_length: int
    features: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    dropout_rate: float = 0.0
    positional: str = "learned"

    @nn.compact
    def __call__(
        self, tokens: Int[Array, "batch length"], *, deterministic: bool = True
    ) -> Float[Array, "batch length vocab"]:
        _check_config(self.positional, self.features, self.num_heads)
        x = _Embedding(self.vocab_size, self.features, self.max_length, self.positional)(tokens)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        attention_fn = (
            rotary_attention if self.positional == "rotary" else scaled_dot_product_attention
        )
        mask = causal_mask(tokens.shape[1])  # [1, 1, L, L]
        for _ in range(self.num_layers):
            x = DecoderBlock(self.num_heads, self.mlp_ratio, self.dropout_rate, attention_fn)(
                x, self_mask=mask, deterministic=deterministic
            )  # [B, L, D]
        return nn.Dense(self.vocab_size, kernel_init=xavier_uniform())(nn.LayerNorm()(x))


class EncoderDecoderTransformer(nn.Module):
    r"""A small encoder–decoder: a bidirectional encoder over the source, a causal decoder that
    cross-attends to it.

    .. math::
       m = \operatorname{Enc}(x), \qquad
       p(y_t \mid y_{<t}, x) = \operatorname{softmax}\big(W_o\,\operatorname{LN}
       \operatorname{Dec}(y_{<t}, m)_t\big)

    The source may be padded: ``src_lengths`` builds a
    :func:`~genjax.nn.attention.padding_mask` used by the encoder's self-attention and the
    decoder's cross-attention. Call ``apply(params, src, src_lengths, tgt)`` for logits, or the
    methods ``encode`` and ``decode`` (``apply(..., method="encode")``) to decode step by step.

    Attributes:
      src_vocab: source token ids.
      tgt_vocab: target token ids.
      max_length: longest source or target.
      positional: ``"sinusoidal"`` or ``"learned"`` (``"rotary"`` applies to self-attention).
      features: model width.
      num_layers: encoder and decoder depth (each).
      num_heads: heads per attention.
      mlp_ratio: MLP width over the model width.
      dropout_rate: dropout rate.

    References:
      Vaswani et al., *Attention Is All You Need*, 2017, https://arxiv.org/abs/1706.03762

    Derivation: derivations/03-attention.md
    """

    src_vocab: int
    tgt_vocab: int
    max_length: int
    positional: str = "sinusoidal"
    features: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    dropout_rate: float = 0.0

    def setup(self):
        _check_config(self.positional, self.features, self.num_heads)
        attention_fn = (
            rotary_attention if self.positional == "rotary" else scaled_dot_product_attention
        )
        embed = lambda vocab, name: _Embedding(
            vocab, self.features, self.max_length, self.positional, name=name
        )
        self.src_embed = embed(self.src_vocab, "src_embed")
        self.tgt_embed = embed(self.tgt_vocab, "tgt_embed")
        self.encoder = [
            EncoderBlock(self.num_heads, self.mlp_ratio, self.dropout_rate, attention_fn)
            for _ in range(self.num_layers)
        ]
        self.decoder = [
            DecoderBlock(self.num_heads, self.mlp_ratio, self.dropout_rate, attention_fn)
            for _ in range(self.num_layers)
        ]
        self.src_norm = nn.LayerNorm()
        self.tgt_norm = nn.LayerNorm()
        self.dropout = nn.Dropout(self.dropout_rate)
        self.head = nn.Dense(self.tgt_vocab, kernel_init=xavier_uniform())

    def encode(
        self,
        src: Int[Array, "batch src_length"],
        src_lengths: Int[Array, " batch"],
        *,
        deterministic: bool = True,
    ) -> Float[Array, "batch src_length features"]:
        """The memory ``[batch, src_length, features]`` (padded positions carry no meaning)."""
        mask = padding_mask(src_lengths, src.shape[1])  # [B, 1, 1, S]
        x = self.dropout(self.src_embed(src), deterministic=deterministic)
        for block in self.encoder:
            x = block(x, mask=mask, deterministic=deterministic)  # [B, S, D]
        return self.src_norm(x)

    def decode(
        self,
        tgt: Int[Array, "batch tgt_length"],
        memory: Float[Array, "batch src_length features"],
        src_lengths: Int[Array, " batch"],
        *,
        deterministic: bool = True,
    ) -> Float[Array, "batch tgt_length tgt_vocab"]:
        """Logits ``[batch, tgt_length, tgt_vocab]``; position ``t`` sees ``tgt[:, :t+1]``."""
        memory_mask = padding_mask(src_lengths, memory.shape[1])  # [B, 1, 1, S]
        self_mask = causal_mask(tgt.shape[1])  # [1, 1, T, T]
        y = self.dropout(self.tgt_embed(tgt), deterministic=deterministic)
        for block in self.decoder:
            y = block(
                y,
                memory,
                self_mask=self_mask,
                memory_mask=memory_mask,
                deterministic=deterministic,
            )  # [B, T, D]
        return self.head(self.tgt_norm(y))  # [B, T, V]

    def __call__(
        self,
        src: Int[Array, "batch src_length"],
        src_lengths: Int[Array, " batch"],
        tgt: Int[Array, "batch tgt_length"],
        *,
        deterministic: bool = True,
    ) -> Float[Array, "batch tgt_length tgt_vocab"]:
        memory = self.encode(src, src_lengths, deterministic=deterministic)
        return self.decode(tgt, memory, src_lengths, deterministic=deterministic)


def pool_at_last(
    h: Float[Array, "batch length features"], lengths: Int[Array, " batch"]
) -> Float[Array, "batch features"]:
    r"""The vector at each sequence's last real position (the EOS token): CLIP's text pooling.

    .. math:: p_b = h_{b,\ \ell_b - 1}

    with :math:`h` = ``h`` and :math:`\ell` = ``lengths``.

    Args:
      h: ``[batch, length, features]`` token vectors (e.g. of :class:`TextEncoder`).
      lengths: ``[batch]`` integer valid lengths in ``[1, length]``; outside ``jit`` they are
        checked, inside they are clipped to that range.

    Returns:
      ``[batch, features]``.

    References:
      Radford et al., *Learning Transferable Visual Models From Natural Language Supervision*,
      2021, https://arxiv.org/abs/2103.00020

    Derivation: derivations/23-contrastive.md
    """
    if h.ndim != 3:
        raise ValueError(f"h must have shape [batch, length, features], got {h.shape}")
    lengths = jnp.asarray(lengths)
    if lengths.shape != h.shape[:1]:
        raise ValueError(f"lengths must have shape [batch] = {h.shape[:1]}, got {lengths.shape}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths must be an integer array, got dtype {lengths.dtype}")
    if (
        is_concrete(lengths)
        and lengths.size
        and not (1 <= int(lengths.min()) and int(lengths.max()) <= h.shape[1])
    ):
        raise ValueError(f"lengths must lie in [1, {h.shape[1]}], got {lengths}")
    last = jnp.clip(lengths - 1, 0, h.shape[1] - 1)  # [B]
    return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]  # [B, D]


class TextEncoder(nn.Module):
    r"""A bidirectional pre-LN encoder of padded token sequences: the text tower shared by the
    text families (CLIP, text-conditioned diffusion).

    .. math::
       h^{(0)} = E[y] + P, \qquad
       h^{(n)} = \operatorname{Enc}_n\big(h^{(n-1)};\ M\big), \qquad
       o_{b t} = [\, t < \ell_b \,]\ \operatorname{LN}\big(h^{(N)}_{b t}\big)

    with :math:`E` the token embedding, :math:`P` the sinusoidal positions
    (:func:`~genjax.nn.positional.sinusoidal_encoding`), :math:`\operatorname{Enc}_n` the
    :class:`EncoderBlock` stack and :math:`M` = :func:`~genjax.nn.attention.padding_mask`
    ``(lengths, L)``: no query attends to a padded key, so a real position's output does not
    depend on the padding (masking equals slicing), and padded positions are zeroed in the output.
    Pool a sentence vector with :func:`pool_at_last` (CLIP) or a masked mean; cross-attend to the
    token vectors with ``memory_mask = padding_mask(lengths, L)``.

    Attributes:
      vocab_size: number of token ids.
      features: model width :math:`D`.
      num_heads: heads per attention (must divide :math:`D`).
      num_layers: :math:`N`.
      max_length: longest sequence.
      dropout: dropout rate (``"dropout"`` RNG stream, when ``deterministic=False``).

    Call: ``apply(params, tokens [B, L] int, lengths [B] int, deterministic=True)`` returns
    ``[B, L, features]``.

    References:
      Radford et al., *Learning Transferable Visual Models From Natural Language Supervision*,
      2021, https://arxiv.org/abs/2103.00020

    Derivation: derivations/23-contrastive.md, derivations/03-attention.md
    """

    vocab_size: int
    features: int = 64
    num_heads: int = 4
    num_layers: int = 2
    max_length: int = 32
    dropout: float = 0.0

    @nn.compact
    def __call__(
        self,
        tokens: Int[Array, "batch length"],
        lengths: Int[Array, " batch"],
        *,
        deterministic: bool = True,
    ) -> Float[Array, "batch length features"]:
        _check_config("sinusoidal", self.features, self.num_heads)
        positive_int("num_layers", self.num_layers)
        if not jnp.issubdtype(jnp.asarray(tokens).dtype, jnp.integer):
            raise TypeError(f"tokens must be an integer array, got dtype {tokens.dtype}")
        x = _Embedding(self.vocab_size, self.features, self.max_length, "sinusoidal")(tokens)
        lengths = jnp.asarray(lengths)
        if lengths.shape != tokens.shape[:1]:
            raise ValueError(
                f"lengths must have shape [batch] = {tokens.shape[:1]}, got {lengths.shape}"
            )
        mask = padding_mask(lengths, tokens.shape[1])  # [B, 1, 1, L]
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        for _ in range(self.num_layers):
            x = EncoderBlock(self.num_heads, dropout_rate=self.dropout)(
                x, mask=mask, deterministic=deterministic
            )  # [B, L, D]
        x = nn.LayerNorm()(x)  # [B, L, D]
        return x * mask[:, 0, 0, :, None].astype(x.dtype)  # [B, L, D], padding zeroed
