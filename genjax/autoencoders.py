r"""Autoencoders: plain, denoising and sparse (L1 and top-k codes).

An encoder :math:`z = f_\phi(x)` and a decoder :math:`\hat x = g_\theta(z)` are trained to
reconstruct their input through a code narrower than it. The maths is three pure functions:
:func:`squared_error`, :func:`corrupt` and the sparsity pair :func:`l1_penalty` /
:func:`top_k_code`. :meth:`Autoencoder.loss` combines them; :class:`DenoisingAutoencoder` and
:class:`SparseAutoencoder` only choose which.

Derivation: derivations/01-autoencoders.md
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax._checks import one_of
from genjax.nn.layers import Conv, ConvTranspose

__all__ = [
    "NOISE_KINDS",
    "Autoencoder",
    "DenoisingAutoencoder",
    "SparseAutoencoder",
    "corrupt",
    "l1_penalty",
    "squared_error",
    "top_k_code",
]

NOISE_KINDS = ("gaussian", "masking")  #: the corruptions of :func:`corrupt`


def squared_error(x, x_hat):
    r"""Per-example squared reconstruction error :math:`\lVert x - \hat x\rVert_2^2`.

    Minimising it is maximum likelihood under a fixed-variance Gaussian decoder
    :math:`p(x\mid z) = N(\hat x, \sigma^2 I)` (``derivations/01-autoencoders.md``).

    Args:
      x: ``[batch, ...]`` inputs.
      x_hat: reconstructions, same shape.

    Returns:
      ``[batch]`` errors summed over every non-batch axis.

    Derivation: derivations/01-autoencoders.md
    """
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {x.shape} and {x_hat.shape}")
    return jnp.sum(jnp.reshape((x - x_hat) ** 2, (x.shape[0], -1)), axis=1)


def corrupt(key, x, kind: str = "gaussian", level: float = 0.3):
    r"""The denoising autoencoder's corruption :math:`\tilde x \sim q(\tilde x \mid x)`.

    * ``"gaussian"``: :math:`\tilde x = x + \sigma\epsilon`, :math:`\epsilon \sim N(0, I)`,
      :math:`\sigma` = ``level``;
    * ``"masking"``: each entry is zeroed independently with probability ``level``.

    Args:
      key: PRNG key; the corruption is a pure function of it.
      x: ``[batch, ...]`` inputs.
      kind: ``"gaussian"`` or ``"masking"``.
      level: noise standard deviation, or masking probability in [0, 1).

    Returns:
      The corrupted ``x``, same shape and dtype.

    References:
      Vincent et al., *Extracting and composing robust features with denoising autoencoders*,
      ICML 2008.

    Derivation: derivations/01-autoencoders.md
    """
    one_of("kind", kind, NOISE_KINDS)
    if kind == "masking":
        if not 0.0 <= level < 1.0:
            raise ValueError(f"masking level must be in [0, 1), got {level}")
        keep = jax.random.bernoulli(key, 1.0 - level, x.shape)
        return jnp.where(keep, x, jnp.zeros_like(x))
    if level < 0:
        raise ValueError(f"gaussian level must be >= 0, got {level}")
    return x + level * jax.random.normal(key, x.shape, x.dtype)


def l1_penalty(code):
    r"""Per-example :math:`\lVert z\rVert_1` of ``code`` ``[batch, code_dim]``: the Laplace-prior
    sparsity penalty, ``[batch]``.

    Derivation: derivations/01-autoencoders.md
    """
    return jnp.sum(jnp.abs(code), axis=-1)


def top_k_code(code, k: int):
    r"""Keep the ``k`` largest entries of each code, zero the rest (k-sparse autoencoder).

    :math:`\mathrm{topk}(z)_i = z_i` if :math:`z_i` is among the ``k`` largest of :math:`z`, else
    0. Gradients flow only through the kept entries.

    Args:
      code: ``[batch, code_dim]``.
      k: entries kept per example, ``1 <= k <= code_dim``.

    Returns:
      ``[batch, code_dim]``, all but the ``k`` largest entries of each row set to 0 (ties with
      the ``k``-th largest are kept).

    References:
      Makhzani & Frey, *k-Sparse Autoencoders*, 2013, https://arxiv.org/abs/1312.5663

    Derivation: derivations/01-autoencoders.md
    """
    if not 1 <= k <= code.shape[-1]:
        raise ValueError(f"k must be in [1, {code.shape[-1]}] (code_dim), got {k}")
    kth = jax.lax.top_k(code, k)[0][..., -1:]  # [batch, 1] the k-th largest value
    return jnp.where(code >= kth, code, jnp.zeros_like(code))


class Autoencoder(nn.Module):
    r"""MLP or convolutional autoencoder for NHWC images, trained on :func:`squared_error`.

    :math:`z = f_\phi(x)`, :math:`\hat x = g_\theta(z) \in (0, 1)` (sigmoid output), per-example
    loss :math:`\lVert x - \hat x\rVert_2^2` (:meth:`loss`). :class:`DenoisingAutoencoder` and
    :class:`SparseAutoencoder` change only the input corruption, the code and the penalty.

    Attributes:
      shape: one example's shape ``(H, W, C)``.
      code_dim: size of the code :math:`z`.
      hidden: width of the MLP's hidden layers / channels of the first conv layer.
      arch: ``"mlp"`` or ``"conv"`` (4x4 convolutions of stride 2, :class:`~genjax.nn.layers.Conv`
        and :class:`~genjax.nn.layers.ConvTranspose`; H and W divisible by 4).

    Derivation: derivations/01-autoencoders.md
    """

    shape: tuple[int, ...]
    code_dim: int = 8
    hidden: int = 128
    arch: str = "mlp"

    def setup(self):
        one_of("arch", self.arch, ("mlp", "conv"))
        if len(self.shape) != 3:
            raise ValueError(f"shape must be (H, W, C), got {self.shape}")
        h, w, c = self.shape
        if self.arch == "conv" and (h % 4 or w % 4):
            raise ValueError(f"arch='conv' needs H and W divisible by 4, got shape {self.shape}")
        dense = nn.Dense
        if self.arch == "mlp":
            self.enc = [dense(self.hidden), dense(self.hidden), dense(self.code_dim)]
            self.dec = [dense(self.hidden), dense(self.hidden), dense(h * w * c)]
        else:
            ch = self.hidden // 4
            self.enc = [Conv(ch, 4, 2, 1), Conv(2 * ch, 4, 2, 1), dense(self.code_dim)]
            self.dec = [
                dense((h // 4) * (w // 4) * 2 * ch),
                ConvTranspose(ch, 4, 2, 1),
                ConvTranspose(c, 4, 2, 1),
            ]

    def encode(self, x):
        """``[batch, H, W, C]`` -> codes ``[batch, code_dim]``."""
        if x.shape[1:] != tuple(self.shape):
            raise ValueError(
                f"x must have shape [batch, {', '.join(map(str, self.shape))}], got {x.shape}"
            )
        b = x.shape[0]
        if self.arch == "mlp":
            h = jnp.reshape(x, (b, -1))  # [batch, H*W*C]
            h = nn.gelu(self.enc[0](h))
            h = nn.gelu(self.enc[1](h))
        else:
            h = nn.gelu(self.enc[0](x))
            h = nn.gelu(self.enc[1](h))
            h = jnp.reshape(h, (b, -1))  # [batch, H/4*W/4*2ch]
        return self.sparsify(self.enc[2](h))

    def decode(self, z):
        """Codes ``[batch, code_dim]`` -> reconstructions ``[batch, H, W, C]`` in (0, 1)."""
        b = z.shape[0]
        h, w, _ = self.shape
        if self.arch == "mlp":
            out = nn.gelu(self.dec[0](z))
            out = nn.gelu(self.dec[1](out))
            out = self.dec[2](out)
        else:
            out = nn.gelu(self.dec[0](z))
            out = jnp.reshape(out, (b, h // 4, w // 4, -1))  # [batch, H/4, W/4, 2ch]
            out = nn.gelu(self.dec[1](out))
            out = self.dec[2](out)
        return nn.sigmoid(jnp.reshape(out, (b, *self.shape)))

    def __call__(self, x):
        """``(reconstruction [batch, H, W, C], code [batch, code_dim])``."""
        z = self.encode(x)
        return self.decode(z), z

    def sparsify(self, z):
        """The code as the decoder sees it (identity here; top-k in the sparse model)."""
        return z

    def corrupt_input(self, key, x):
        """The encoder's input during training (``x`` itself here; noisy when denoising)."""
        del key
        return x

    def penalty(self, code):
        """Per-example regulariser of the code, ``[batch]`` (zero here; L1 when sparse)."""
        return jnp.zeros(code.shape[:1], code.dtype)

    def loss(self, key, x):
        r"""Per-example objective :math:`\lVert x - g(f(\tilde x))\rVert_2^2 + \Omega(f(\tilde x))`.

        Args:
          key: PRNG key of the corruption :math:`\tilde x \sim q(\tilde x\mid x)` (unused
            without one).
          x: ``[batch, H, W, C]`` clean inputs; the target is always the clean ``x``.

        Returns:
          ``(loss [batch], code [batch, code_dim])``.
        """
        x_hat, code = self(self.corrupt_input(key, x))
        return squared_error(x, x_hat) + self.penalty(code), code


class DenoisingAutoencoder(Autoencoder):
    """Autoencoder trained to reconstruct ``x`` from :func:`corrupt` ``(key, x, noise, level)``.

    Attributes:
      noise: ``"gaussian"`` or ``"masking"``.
      noise_level: its standard deviation, or its masking probability.

    References:
      Vincent et al., *Extracting and composing robust features with denoising autoencoders*,
      ICML 2008.

    Derivation: derivations/01-autoencoders.md
    """

    noise: str = "gaussian"
    noise_level: float = 0.3

    def __post_init__(self):
        one_of("noise", self.noise, NOISE_KINDS)
        super().__post_init__()

    def corrupt_input(self, key, x):
        return corrupt(key, x, self.noise, self.noise_level)


class SparseAutoencoder(Autoencoder):
    r"""Autoencoder with a sparse code: :func:`top_k_code` and/or :math:`\lambda` L1 penalty.

    Attributes:
      top_k: entries kept per code (``None``: all).
      l1: :math:`\lambda`, the weight of the L1 penalty on the code.

    References:
      Makhzani & Frey, *k-Sparse Autoencoders*, 2013, https://arxiv.org/abs/1312.5663

    Derivation: derivations/01-autoencoders.md
    """

    top_k: int | None = None
    l1: float = 0.0

    def sparsify(self, z):
        return z if self.top_k is None else top_k_code(z, self.top_k)

    def __post_init__(self):
        if self.l1 < 0:
            raise ValueError(f"l1 must be >= 0, got {self.l1}")
        if self.top_k is not None and not 1 <= self.top_k <= self.code_dim:
            raise ValueError(f"top_k must be in [1, {self.code_dim}] (code_dim), got {self.top_k}")
        super().__post_init__()

    def penalty(self, code):
        return self.l1 * l1_penalty(code)
