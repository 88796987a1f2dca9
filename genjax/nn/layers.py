r"""Layers shared by the families: strided and transposed convolutions, spectral normalisation.

* :func:`strided_conv` and :func:`conv_transpose`: the one convolution of genjax, wrapped by
  :class:`Conv` and :class:`ConvTranspose` and used by every family. How they are computed is
  chosen by backend in one place, :func:`conv_formulation`: on CPU a canonical XLA convolution
  forward with a custom VJP whose gradients are canonical XLA convolutions too (both
  differentiate again, as a WGAN-GP penalty needs), on accelerators XLA's convolution and its
  autodiff.
* Spectral normalisation: :func:`power_iteration` estimates the largest singular value
  :math:`\sigma(W)` of a weight matrix from a persistent vector :math:`u`,
  :func:`spectral_normalize` divides the kernel by it, :func:`spectral_norm_exact` is the SVD
  reference, and :class:`SpectralDense` / :class:`SpectralConv` keep :math:`u` in the mutable
  ``"spectral"`` collection and advance it by one power-iteration step per training call.
* Conditioning blocks of the diffusion networks: :class:`TimeEmbedding` (sinusoidal encoding of
  an integer step, then an MLP) and :class:`ResBlock` (GroupNorm, SiLU, :class:`Conv`, plus a
  projection of the embedding, residual).

Derivation: derivations/09-wgan.md (section 2, spectral norm as a Lipschitz bound)
"""

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from genjax.nn._formulation import conv_formulation
from genjax.nn.norm import GroupNorm, channel_sums
from genjax.nn.positional import sinusoidal_encoding

__all__ = [
    "EPS",
    "SPECTRAL",
    "Conv",
    "ConvTranspose",
    "Dense",
    "ResBlock",
    "SpectralConv",
    "SpectralDense",
    "TimeEmbedding",
    "conv_formulation",
    "conv_transpose",
    "dense",
    "group_count",
    "kernel_matrix",
    "power_iteration",
    "spectral_norm_exact",
    "spectral_normalize",
    "strided_conv",
]

SPECTRAL = "spectral"  #: the Flax collection holding the power-iteration vectors ``u``
EPS = 1e-12  #: added under the square root of vector norms in the power iteration


# ----------------------------------------------------------------------------- convolutions


def _check_conv(x, kernel, stride: int, padding: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"x must have shape [batch, H, W, C], got {x.shape}")
    if kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
        raise ValueError(
            f"kernel must have shape [kh, kw, C, O] with C = {x.shape[3]} (x's channels), "
            f"got {kernel.shape}"
        )
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")


_DIMS = ("NHWC", "HWIO", "NHWC")


# The private convolutions take ``pads = ((lo_h, hi_h), (lo_w, hi_w))``: for ``_conv`` the zeros
# added before/after each spatial axis, for ``_conv_t`` the rows/columns cropped from the full
# transposed output of side ``(H - 1) s + k`` (negative values pad). With the adjoint kernel
# they are each other's adjoints (``_adjoint_pads`` gives the crops of a ``_conv``'s adjoint).


def _xla_conv(x: Array, kernel: Array, stride: int, pads) -> Array:
    # the strided convolution in XLA's canonical layout (NHWC input, HWIO kernel)
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pads, dimension_numbers=_DIMS)


def _xla_conv_transpose(x: Array, kernel: Array, stride: int, pads) -> Array:
    # dilate by the stride, pad by k - 1 - crop, convolve: one canonical XLA convolution
    edges = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel.shape[:2], pads, strict=True)]
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), edges, lhs_dilation=(stride, stride), dimension_numbers=_DIMS
    )


def _adjoint_kernel(kernel: Array) -> Array:
    """``K'[p, q, o, c] = K[k-1-p, k-1-q, c, o]``: the kernel of the adjoint convolution."""
    return jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)


def _adjoint_pads(x: Array, y: Array, kernel: Array, stride: int, pads):
    """For ``y = _conv(x, kernel, stride, pads)``: the ``(lo, hi)`` of each spatial axis such
    that the full transposed output (padded rows ``0 .. (H' - 1) s + k``) cropped by them is
    ``x``'s rows ``lo .. lo + H`` (rows past the last window: ``hi < 0``, zero gradient)."""
    sizes = zip(pads, y.shape[1:3], x.shape[1:3], kernel.shape[:2], strict=True)
    return tuple((lo, (m - 1) * stride + k - lo - n) for (lo, _), m, n, k in sizes)


KERNEL_GRADIENT_CHUNKS = 4  #: batch chunks of the kernel gradient (:func:`_correlate`)
_MIN_CHUNK_ROWS = 1024  # positions per chunk below which a kernel gradient stays whole


def _correlate(source: Array, other: Array, kernel_shape, stride: int, pads) -> Array:
    """``sum_{b,i,j} src[b, s i + p, s j + q, c] other[b, i, j, o]`` as ``[kh, kw, C, O]``, with
    ``src`` = ``source`` padded by ``pads`` (negative crops): the kernel gradient of a
    convolution. It is itself a convolution in XLA's canonical layout, with the channels ``C`` as
    its batch, the batch ``b`` as the contracted features and ``other`` as a kernel dilated by
    ``s``. Only two transposes of size 1x are copied (an im2col would copy ``k_h k_w`` x).

    The batch is cut into :data:`KERNEL_GRADIENT_CHUNKS` chunks whose kernel gradients are
    added: XLA's CPU convolution contracts a short feature axis faster (a 3x3 gradient over
    ``[64, 28, 28, 32]``: 8.1 ms whole, 5.4 ms in four chunks; PyTorch 3.0 ms). Small
    gradients stay whole, where four convolutions cost more than one: fewer than 8 channels, a
    batch that does not split into chunks of 8, or fewer than 1024 of ``source``'s positions per
    chunk (DCGAN's 8x8 step: 4 % slower in chunks)."""
    chunks = KERNEL_GRADIENT_CHUNKS
    b = source.shape[0]
    if (
        chunks > 1
        and b % chunks == 0
        and b // chunks >= 8
        and min(source.shape[-1], other.shape[-1]) >= 8
        and b // chunks * source.shape[1] * source.shape[2] >= _MIN_CHUNK_ROWS
    ):
        size = b // chunks
        parts = (slice(i * size, (i + 1) * size) for i in range(chunks))
        return sum(_correlate_whole(source[p], other[p], kernel_shape, stride, pads) for p in parts)
    return _correlate_whole(source, other, kernel_shape, stride, pads)


def _correlate_whole(source: Array, other: Array, kernel_shape, stride: int, pads) -> Array:
    kh, kw = kernel_shape
    lhs = source.transpose(3, 1, 2, 0)  # [C, H, W, b]
    rhs = other.transpose(1, 2, 0, 3)  # [h, w, b, O]
    dilation = (stride, stride)
    out = jax.lax.conv_general_dilated(
        lhs, rhs, (1, 1), pads, rhs_dilation=dilation, dimension_numbers=_DIMS
    )  # [C, >= kh, >= kw, O]
    return out[:, :kh, :kw].transpose(1, 2, 0, 3)


def _materialized(dy: Array) -> Array:
    """``dy`` computed once: both gradients read it, and XLA would otherwise fuse its
    elementwise producer into the kernel gradient's transpose as well as computing it for the
    input gradient, in the transpose's strided order."""
    return jax.lax.optimization_barrier(dy)


def _conv_bwd(stride, pads, residuals, dy):
    x, kernel = residuals
    dy = _materialized(dy)
    crops = _adjoint_pads(x, dy, kernel, stride, pads)
    # the input gradient: the transposed convolution of dy with the adjoint kernel
    dx = _conv_t(dy, _adjoint_kernel(kernel), stride, crops)
    # the kernel gradient reads x padded as the windows cover it: the same (lo, hi)
    return dx, _correlate(x, dy, kernel.shape[:2], stride, crops)


def _conv_t_bwd(stride, pads, residuals, dy):
    x, kernel = residuals
    dy = _materialized(dy)
    # the adjoint of a transposed convolution is the strided convolution with the adjoint kernel
    dx = _conv(dy, _adjoint_kernel(kernel), stride, pads)
    flipped = _correlate(dy, x, kernel.shape[:2], stride, pads)  # [k, k, O, C], flipped
    return dx, _adjoint_kernel(flipped)


def _with_vjp(forward: Callable, backward: Callable) -> Callable:
    """``forward(x, kernel, stride, pads)`` with ``backward`` as its VJP (residuals ``(x,
    kernel)``); the backward passes call the wrapped ops again, so they differentiate again."""
    op = jax.custom_vjp(forward, nondiff_argnums=(2, 3))
    op.defvjp(lambda x, kernel, stride, pads: (op(x, kernel, stride, pads), (x, kernel)), backward)
    return op


def _cpu_conv_transpose(x: Array, kernel: Array, stride: int, pads) -> Array:
    if stride == 1 or max(x.shape[1:3]) > 2:
        return _xla_conv_transpose(x, kernel, stride, pads)
    # XLA's CPU convolution with an input dilation is slow on a 2x2 input (4x4 kernel, 128 -> 64
    # channels, batch 64: 13.9 ms, against 2.3 ms this way): dilate and pad first, behind a
    # barrier that keeps XLA from folding the dilation back into the convolution
    edges = zip(kernel.shape[:2], pads, strict=True)
    config = [(0, 0, 0), *((k - 1 - lo, k - 1 - hi, stride - 1) for k, (lo, hi) in edges)]
    dilated = jax.lax.pad(x, jnp.zeros((), x.dtype), [*config, (0, 0, 0)])
    dilated = jax.lax.optimization_barrier(dilated)
    return jax.lax.conv_general_dilated(dilated, kernel, (1, 1), "VALID", dimension_numbers=_DIMS)


_conv = _with_vjp(_xla_conv, _conv_bwd)
_conv_t = _with_vjp(_cpu_conv_transpose, _conv_t_bwd)


_CONVS = {"adjoint": (_conv, _conv_t), "xla": (_xla_conv, _xla_conv_transpose)}


def strided_conv(
    x: Float[Array, "batch H W C"],
    kernel: Float[Array, "kh kw C O"],
    stride: int = 1,
    padding: int = 0,
) -> Float[Array, "batch H2 W2 O"]:
    r"""A 2-D convolution (cross-correlation) with stride and symmetric zero padding.

    .. math:: y_{b,i,j,o} = \sum_{p<k_h,\,q<k_w,\,c} \tilde x_{b,\,s i + p,\,s j + q,\,c}\,
              K_{p,q,c,o}, \qquad H_2 = \lfloor (H + 2P - k_h)/s \rfloor + 1

    with :math:`x` = ``x``, :math:`K` = ``kernel``, :math:`s` = ``stride``, :math:`P` =
    ``padding`` and :math:`\tilde x` the input padded by :math:`P` zeros on each side.

    Args:
      x: ``[batch, H, W, C]`` (NHWC).
      kernel: ``[kh, kw, C, O]`` (HWIO, flax's ``Conv`` layout).
      stride: :math:`s \ge 1`, the same along both axes.
      padding: :math:`P \ge 0` zeros added on every side.

    Returns:
      ``[batch, H2, W2, O]``.

    Note:
      Same numbers as ``jax.lax.conv_general_dilated(x, kernel, (s, s), [(P, P), (P, P)],
      dimension_numbers=("NHWC", "HWIO", "NHWC"))``, computed as :func:`conv_formulation` says
      (on CPU, a custom VJP whose gradients stay fast inside ``lax.scan``).

    Derivation: derivations/09-wgan.md
    """
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    _check_conv(x, kernel, stride, padding)
    if kernel.shape[0] > x.shape[1] + 2 * padding or kernel.shape[1] > x.shape[2] + 2 * padding:
        raise ValueError(
            f"kernel {kernel.shape[:2]} is larger than the padded input "
            f"{(x.shape[1] + 2 * padding, x.shape[2] + 2 * padding)}"
        )
    pads = ((padding, padding), (padding, padding))
    return _CONVS[conv_formulation()][0](x, kernel, stride, pads)


def conv_transpose(
    x: Float[Array, "batch H W C"],
    kernel: Float[Array, "kh kw C O"],
    stride: int = 2,
    padding: int = 0,
) -> Float[Array, "batch H2 W2 O"]:
    r"""A transposed ("fractionally strided") convolution: dilate by the stride, then convolve.

    .. math:: y = \mathrm{conv}\big(\mathrm{pad}_{k-1-P}(\mathrm{dilate}_s(x)),\, K\big),
              \qquad H_2 = (H - 1)\,s - 2P + k_h

    where :math:`\mathrm{dilate}_s` inserts :math:`s - 1` zeros between neighbouring pixels and
    :math:`\mathrm{pad}_{k-1-P}` adds :math:`k_h - 1 - P` zeros on every side (requires
    :math:`P \le k_h - 1`). With :math:`k = 4, s = 2, P = 1` it exactly doubles the resolution.

    Args:
      x: ``[batch, H, W, C]``.
      kernel: ``[kh, kw, C, O]`` with ``kh == kw``.
      stride: :math:`s \ge 1`.
      padding: :math:`P`, ``0 <= P <= kh - 1``.

    Returns:
      ``[batch, H2, W2, O]``.

    Note:
      Equals ``jax.lax.conv_general_dilated`` with ``lhs_dilation=(s, s)`` and padding
      :math:`k-1-P`, and flax's ``nn.ConvTranspose`` (``transpose_kernel=False``) with that
      padding. PyTorch's ``ConvTranspose2d(C, O, k, s, P)`` gives the same output shape; its
      weight ``[C, O, k, k]`` corresponds to our ``kernel`` flipped in both spatial axes.

    Derivation: derivations/09-wgan.md
    """
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    _check_conv(x, kernel, stride, padding)
    k = kernel.shape[0]
    if kernel.shape[1] != k:
        raise ValueError(f"kernel must be square, got {kernel.shape[:2]}")
    if padding > k - 1:
        raise ValueError(f"padding must be <= kh - 1 = {k - 1}, got {padding}")
    pads = ((padding, padding), (padding, padding))
    return _CONVS[conv_formulation()][1](x, kernel, stride, pads)


def _conv_kernel(module: nn.Module, x: Array) -> Array:
    """The ``[k, k, C, O]`` kernel of a conv module (named and shaped as flax's ``nn.Conv``)."""
    shape = (module.kernel_size, module.kernel_size, x.shape[-1], module.features)
    return module.param("kernel", module.kernel_init, shape)


def _plus_bias(y: Array, bias: Array) -> Array:
    return y + bias.reshape((1,) * (y.ndim - 1) + (-1,))  # [..., features]


# the bias's gradient is a sum over every position of every example: as
# genjax.nn.norm.channel_sums sums, which XLA's CPU backend runs faster than one reduction
_bias_add = jax.custom_vjp(_plus_bias)
_bias_add.defvjp(lambda y, bias: (_plus_bias(y, bias), None), lambda _, dy: (dy, channel_sums(dy)))


def _biased(y: Array, bias: Array) -> Array:
    """``y + bias``, with the bias's gradient as :func:`conv_formulation` says."""
    return (_bias_add if conv_formulation() == "adjoint" else _plus_bias)(y, bias)


def _add_bias(module: nn.Module, y: Array) -> Array:
    if not module.use_bias:
        return y
    return _biased(y, module.param("bias", nn.initializers.zeros, (module.features,)))


def _product(x: Array, kernel: Array) -> Array:
    return jnp.dot(x, kernel)  # [..., in] @ [in, out]


def _product_bwd(residuals, dy):
    x, kernel = residuals
    rows, drows = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])  # [N, in], [N, out]
    # both gradients as plain products of explicitly transposed copies: XLA's CPU products
    # with a transposed operand are 2-3x slower ([128, 256] x [3136, 256]^T: 3.0 ms, 0.87 ms
    # this way, inside a lax.scan on two cores)
    dx = _product_vjp(drows, _materialized(kernel.T)).reshape(x.shape)
    return dx, _product_vjp(_materialized(rows.T), drows)


_product_vjp = jax.custom_vjp(_product)
_product_vjp.defvjp(lambda x, kernel: (_product(x, kernel), (x, kernel)), _product_bwd)


def dense(
    x: Float[Array, "*batch in"],
    kernel: Float[Array, "in out"],
    bias: Float[Array, " out"] | None = None,
) -> Float[Array, "*batch out"]:
    r"""An affine map of the last axis, :math:`y = x W + b`.

    The gradients are :math:`\partial L/\partial x = \delta W^\top`, :math:`\partial
    L/\partial W = x^\top \delta` and :math:`\partial L/\partial b = \sum \delta` over the
    leading axes (:math:`\delta = \partial L/\partial y`); under the ``"adjoint"``
    formulation (CPU, :func:`conv_formulation`) they are computed as products of explicitly
    transposed copies and :func:`genjax.nn.norm.channel_sums`, which XLA's CPU backend runs
    2-3x faster than the products autodiff emits.

    Args:
      x: ``[..., in]``.
      kernel: ``[in, out]`` (flax's ``nn.Dense`` layout).
      bias: optional ``[out]``.

    Returns:
      ``[..., out]``.

    Derivation: derivations/09-wgan.md
    """
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    if x.ndim < 1 or kernel.ndim != 2 or kernel.shape[0] != x.shape[-1]:
        raise ValueError(
            f"kernel must have shape [in, out] with in = x.shape[-1], got x {x.shape} and "
            f"kernel {kernel.shape}"
        )
    y = (_product_vjp if conv_formulation() == "adjoint" else _product)(x, kernel)
    if bias is None:
        return y
    if jnp.shape(bias) != kernel.shape[1:]:
        raise ValueError(f"bias must have shape {kernel.shape[1:]}, got {jnp.shape(bias)}")
    return _biased(y, jnp.asarray(bias, y.dtype))


class Dense(nn.Module):
    """:func:`dense` with a learned kernel and bias: a drop-in for flax's ``nn.Dense`` (the same
    fields but ``bias_init``, parameter names, shapes and initialisers), differentiated as
    :func:`conv_formulation` says.

    Attributes:
      features: output width.
      use_bias: add a learned bias.
      kernel_init: kernel initialiser (LeCun normal); the bias starts at zero.

    Derivation: derivations/09-wgan.md
    """

    features: int
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: Float[Array, "*batch in"]) -> Float[Array, "*batch features"]:
        kernel = self.param("kernel", self.kernel_init, (jnp.shape(x)[-1], self.features))
        return _add_bias(self, dense(x, kernel))


class _ConvLayer(nn.Module):
    """The fields and call of :class:`Conv` and :class:`ConvTranspose`; ``_op`` is the conv."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()

    def _op(self, x: Array, kernel: Array) -> Array:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: Float[Array, "batch H W C"]) -> Float[Array, "batch H2 W2 O"]:
        return _add_bias(self, self._op(x, _conv_kernel(self, x)))


class Conv(_ConvLayer):
    r"""A convolution layer computed by :func:`strided_conv`, with bias.

    Parameters are named and shaped as flax's ``nn.Conv``: ``kernel [k, k, C, O]``, ``bias [O]``.

    Attributes:
      features: output channels :math:`O`.
      kernel_size: :math:`k`.
      stride: :math:`s`.
      padding: :math:`P`.
      use_bias: add a learned bias.
      kernel_init: kernel initialiser (flax's default, LeCun normal).

    Derivation: derivations/09-wgan.md
    """

    def _op(self, x, kernel):
        return strided_conv(x, kernel, self.stride, self.padding)


class ConvTranspose(_ConvLayer):
    r"""A transposed convolution layer computed by :func:`conv_transpose`, with bias.

    Attributes:
      features: output channels :math:`O`.
      kernel_size: :math:`k`.
      stride: :math:`s` (the upsampling factor when ``kernel_size = 2 padding + stride``).
      padding: :math:`P`.
      use_bias: add a learned bias.
      kernel_init: kernel initialiser.

    Derivation: derivations/09-wgan.md
    """

    kernel_size: int = 4
    stride: int = 2

    def _op(self, x, kernel):
        return conv_transpose(x, kernel, self.stride, self.padding)


# ----------------------------------------------------------------------------- spectral norm


def kernel_matrix(kernel: Float[Array, "*fan_in out"]) -> Float[Array, "out fan_in"]:
    r"""The matrix :math:`W \in \mathbb R^{O \times n}` whose spectral norm normalises a kernel.

    A dense kernel ``[in, out]`` or a conv kernel ``[kh, kw, C, O]`` is reshaped to
    ``[fan_in, out]`` (``fan_in`` = product of all axes but the last) and transposed, so that
    ``y = W x`` for a flattened input patch ``x``.

    Args:
      kernel: ``[..., out]`` with at least 2 axes.

    Returns:
      ``[out, fan_in]``.

    Derivation: derivations/09-wgan.md
    """
    kernel = jnp.asarray(kernel)
    if kernel.ndim < 2:
        raise ValueError(f"kernel must have shape [..., in, out], got {kernel.shape}")
    return kernel.reshape(-1, kernel.shape[-1]).T  # [out, fan_in]


def _normalize(v: Array) -> Array:
    return v * jax.lax.rsqrt(jnp.sum(v * v) + EPS)


def power_iteration(
    w: Float[Array, "out fan_in"], u: Float[Array, " out"], num_iters: int = 1
) -> tuple[Float[Array, ""], Float[Array, " out"], Float[Array, " fan_in"]]:
    r"""Power iteration for the largest singular value :math:`\sigma(W)`.

    Each step maps the left vector :math:`u` through :math:`W^\top` and back through :math:`W`:

    .. math:: v \leftarrow \frac{W^\top u}{\|W^\top u\|}, \qquad
              u \leftarrow \frac{W v}{\|W v\|}, \qquad \hat\sigma = u^\top W v

    with :math:`W` = ``w`` and :math:`u` = ``u``. :math:`u` converges to the top left singular
    vector at rate :math:`(\sigma_2/\sigma_1)^{2t}`, and :math:`\hat\sigma \le \sigma(W)` always
    (Cauchy–Schwarz). The returned :math:`u, v` are wrapped in ``stop_gradient``, so
    :math:`\partial\hat\sigma/\partial W = u v^\top` — the derivative of the exact
    :math:`\sigma` at a simple top singular value.

    Args:
      w: ``[out, fan_in]`` matrix :math:`W`.
      u: ``[out]`` current estimate of the top left singular vector (any non-zero vector to
        start).
      num_iters: power-iteration steps :math:`t \ge 1` (1 per training step in SN-GAN).

    Returns:
      ``(sigma, u, v)``: the estimate :math:`\hat\sigma` (scalar), the new ``u [out]`` and
      ``v [fan_in]``.

    References:
      Miyato et al., *Spectral Normalization for Generative Adversarial Networks*, 2018,
      https://arxiv.org/abs/1802.05957 (Algorithm 1).

    Derivation: derivations/09-wgan.md
    """
    w, u = jnp.asarray(w), jnp.asarray(u)
    if w.ndim != 2:
        raise ValueError(f"w must have shape [out, fan_in], got {w.shape}")
    if u.shape != (w.shape[0],):
        raise ValueError(f"u must have shape ({w.shape[0]},), got {u.shape}")
    if not isinstance(num_iters, int) or num_iters < 1:
        raise ValueError(f"num_iters must be a positive int, got {num_iters!r}")
    w_const = jax.lax.stop_gradient(w)

    def step(u, _):
        v = _normalize(w_const.T @ u)  # [fan_in]
        return _normalize(w_const @ v), v  # [out]

    u, vs = jax.lax.scan(step, jax.lax.stop_gradient(u), length=num_iters)
    v = vs[-1]
    sigma = u @ w @ v  # differentiable in w only
    return sigma, u, v


def spectral_normalize(
    kernel: Float[Array, "*fan_in out"], u: Float[Array, " out"], num_iters: int = 1
) -> tuple[Float[Array, "*fan_in out"], Float[Array, " out"], Float[Array, ""]]:
    r"""Divide a kernel by the power-iteration estimate of its spectral norm.

    .. math:: \bar W = W / \hat\sigma(W), \qquad \hat\sigma = u^\top W v \ \
              \text{(:func:`power_iteration` on } W = \text{:func:`kernel_matrix`(kernel))}

    so that :math:`\|\bar W\|_2 \approx 1` and the layer :math:`x \mapsto \bar W x + b` is
    (approximately) 1-Lipschitz.

    Args:
      kernel: ``[..., out]`` dense ``[in, out]`` or conv ``[kh, kw, C, O]`` kernel.
      u: ``[out]`` persistent power-iteration vector.
      num_iters: power-iteration steps per call.

    Returns:
      ``(normalised kernel [..., out], new u [out], sigma [])``.

    Note:
      For a convolution this normalises the reshaped kernel, as Miyato et al. do; the operator
      norm of the convolution itself can be larger, by at most
      :math:`\sqrt{\lceil k_h/s\rceil \lceil k_w/s\rceil}` (each input pixel enters that many
      patches), so the 1-Lipschitz bound of derivations/09-wgan.md holds for the matrix and only
      up to that factor for the conv layer.

    Derivation: derivations/09-wgan.md
    """
    sigma, u, _ = power_iteration(kernel_matrix(kernel), u, num_iters)
    return kernel / sigma, u, sigma


def spectral_norm_exact(kernel: Float[Array, "*fan_in out"]) -> Float[Array, ""]:
    r"""The exact spectral norm :math:`\sigma_{\max}` of :func:`kernel_matrix`\ (kernel), by SVD.

    Args:
      kernel: ``[..., out]`` kernel.

    Returns:
      Scalar largest singular value.

    Derivation: derivations/09-wgan.md
    """
    return jnp.linalg.svd(kernel_matrix(kernel), compute_uv=False)[0]


def _spectral_kernel(module: nn.Module, kernel: Array, update_stats: bool, num_iters: int):
    out = kernel.shape[-1]
    u_var = module.variable(
        SPECTRAL,
        "u",
        lambda: _normalize(jax.random.normal(module.make_rng("params"), (out,), kernel.dtype)),
    )
    sigma_var = module.variable(SPECTRAL, "sigma", lambda: jnp.ones((), kernel.dtype))
    w_bar, u, sigma = spectral_normalize(kernel, u_var.value, num_iters)
    if update_stats and not module.is_initializing():
        u_var.value = u
        sigma_var.value = jax.lax.stop_gradient(sigma)
    return w_bar


class SpectralDense(nn.Module):
    r"""A dense layer with a spectrally normalised kernel, :math:`y = x \bar W + b`.

    The kernel ``[in, out]`` is a parameter; the power-iteration vector ``u [out]`` and the last
    estimate ``sigma`` live in the ``"spectral"`` collection. ``update_stats=True`` (training)
    advances ``u`` by ``num_iters`` steps and requires ``mutable=["spectral"]`` in ``apply``;
    ``update_stats=False`` (evaluation, and the generator's step of a GAN) normalises by the same
    one-step estimate from the stored ``u`` without writing it back.

    Attributes:
      features: output width.
      use_bias: add a learned (unnormalised) bias.
      num_iters: power-iteration steps per call.
      kernel_init: kernel initialiser.

    References:
      Miyato et al., *Spectral Normalization for Generative Adversarial Networks*, 2018,
      https://arxiv.org/abs/1802.05957

    Derivation: derivations/09-wgan.md
    """

    features: int
    use_bias: bool = True
    num_iters: int = 1
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(
        self, x: Float[Array, "*batch in"], update_stats: bool = False
    ) -> Float[Array, "*batch out"]:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        w_bar = _spectral_kernel(self, kernel, update_stats, self.num_iters)
        y = jnp.einsum("...i,io->...o", x, w_bar)  # [..., out]
        return _add_bias(self, y)


class SpectralConv(nn.Module):
    r"""A convolution (:func:`strided_conv`) with a spectrally normalised kernel.

    The ``[k, k, C, O]`` kernel is normalised as the ``[O, k k C]`` matrix of
    :func:`kernel_matrix`; ``u`` and ``sigma`` live in the ``"spectral"`` collection, updated as in
    :class:`SpectralDense`.

    Attributes:
      features: output channels.
      kernel_size: :math:`k`.
      stride: :math:`s`.
      padding: :math:`P`.
      use_bias: add a learned bias.
      num_iters: power-iteration steps per call.
      kernel_init: kernel initialiser.

    Derivation: derivations/09-wgan.md
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    use_bias: bool = True
    num_iters: int = 1
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(
        self, x: Float[Array, "batch H W C"], update_stats: bool = False
    ) -> Float[Array, "batch H2 W2 O"]:
        w_bar = _spectral_kernel(self, _conv_kernel(self, x), update_stats, self.num_iters)
        y = strided_conv(x, w_bar, self.stride, self.padding)
        return _add_bias(self, y)


# ----------------------------------------------------------------------------- diffusion blocks


class TimeEmbedding(nn.Module):
    r"""Embed integer diffusion steps: sinusoidal encoding, then Dense → SiLU → Dense.

    .. math:: e(t) = W_2\,\mathrm{SiLU}(W_1\,\mathrm{PE}(t) + b_1) + b_2

    where :math:`\mathrm{PE}(t)` is row ``t`` of
    ``sinusoidal_encoding(num_steps, features)`` (the Transformer's position encoding, with the
    step as the position).

    Attributes:
      num_steps: number of steps :math:`T` (rows of the encoding table).
      features: width of the encoding and of the output (even).

    Returns (``__call__(t)``):
      ``[batch, features]`` for ``t`` ``[batch]`` int.

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020 (appendix B),
      https://arxiv.org/abs/2006.11239

    Derivation: derivations/11-ddpm.md
    """

    num_steps: int
    features: int

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        t = jnp.asarray(t)
        if t.ndim != 1 or not jnp.issubdtype(t.dtype, jnp.integer):
            raise ValueError(f"t must be [batch] integer steps, got {t.shape} {t.dtype}")
        table = sinusoidal_encoding(self.num_steps, self.features)  # [T, features]
        h = Dense(self.features)(table[t])  # [batch, features]
        return Dense(self.features)(nn.silu(h))


def group_count(num_groups: int, channels: int) -> int:
    """The largest number of GroupNorm groups that divides ``channels`` and is at most
    ``num_groups`` (their greatest common divisor).

    Derivation: derivations/11-ddpm.md
    """
    return math.gcd(num_groups, channels)


class ResBlock(nn.Module):
    r"""A residual block conditioned on an embedding (time, and label if any).

    .. math:: h = \mathrm{Conv}\big(\mathrm{Drop}(\mathrm{SiLU}(\mathrm{GN}(
       \mathrm{Conv}(\mathrm{SiLU}(\mathrm{GN}(x))) + W e))))\big),\qquad y = \mathrm{skip}(x) + h

    with 3x3 :class:`Conv` layers; the second is zero-initialised, so at initialisation the
    block is ``skip(x)`` (the identity, or a 1x1 projection when the width changes).

    Attributes:
      features: output channels.
      num_groups: GroupNorm groups (reduced by :func:`group_count` to divide the channels).
      dropout: dropout rate (uses the ``"dropout"`` RNG stream when ``train``).

    Returns (``__call__(x, emb, train=False)``):
      ``[b, H, W, features]`` for ``x`` ``[b, H, W, C]`` and ``emb`` ``[b, E]``.

    References:
      He et al., *Identity Mappings in Deep Residual Networks*, 2016,
      https://arxiv.org/abs/1603.05027

    Derivation: derivations/11-ddpm.md
    """

    features: int
    num_groups: int = 8
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
        h = nn.silu(GroupNorm(group_count(self.num_groups, x.shape[-1]))(x))
        h = Conv(self.features)(h)  # [b, H, W, features]
        h = h + Dense(self.features)(nn.silu(emb))[:, None, None, :]  # [b, H, W, features]
        h = nn.silu(GroupNorm(group_count(self.num_groups, self.features))(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = Conv(self.features, kernel_init=nn.initializers.zeros)(h)
        skip = x if x.shape[-1] == self.features else Dense(self.features)(x)  # 1x1 conv
        return skip + h
