r"""Neural style transfer: Gram matrices, content and style losses, total variation, and Gatys
stylisation by optimising the image.

* :func:`gram_matrix` — second-order feature statistics
  :math:`G_{cd} = \frac{1}{HW}\sum_{h,w} F_{hwc}F_{hwd}`, blind to where a feature occurs;
* :func:`content_loss` — mean squared feature difference (where things are);
* :func:`style_loss` — weighted sum over layers of mean squared Gram differences (what textures
  occur);
* :func:`total_variation` — squared (or absolute) differences of neighbouring pixels, the
  high-frequency artefact fix;
* :func:`random_features` — the default feature extractor: one layer of random convolutions
  with ReLU over an image pyramid (:func:`random_feature_kernels`);
* :func:`stylization_loss` and :func:`stylize` — the Gatys objective and its minimisation over
  the pixels with Adam (optax) inside one jitted ``lax.scan``;
* :func:`pattern` — generated content and style images, so the example needs no files.

Why random features: Gatys et al. use an ImageNet-trained VGG, whose weights are not shipped.
Ustyuzhaninov et al. (2017) showed that the Gram statistics of a *single layer of random
filters at several scales* already synthesise natural textures comparably well, so they are an
embedded default that needs no download and no training (here the scales come from an image
pyramid rather than from large kernels; see :func:`random_features`). Any
``features(images) -> [maps]`` function can be passed instead (e.g. a trained network's ReLU
maps).

Derivation: derivations/17-style-transfer.md
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from genjax import _checks
from genjax.nn.layers import strided_conv

__all__ = [
    "PATTERNS",
    "Features",
    "StyleResult",
    "StyleTargets",
    "average_pool",
    "content_loss",
    "gram_matrix",
    "load_image",
    "logit",
    "pattern",
    "plot_history",
    "random_feature_kernels",
    "random_features",
    "style_loss",
    "style_targets",
    "stylization_loss",
    "stylize",
    "total_variation",
    "vgg_features",
]

#: A feature extractor: ``images [B, H, W, C] -> [one map [B, H_l, W_l, C_l] per layer]``.
Features = Callable[[jax.Array], Sequence[jax.Array]]

_FACTORS = (1, 2, 4, 8)  # pooling factor per scale of the random features
_KERNEL = 5
_FILTERS = 32


def _check_maps(name: str, x) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"{name} must have shape [*batch, H, W, C], got {x.shape}")
    return x


# ----------------------------------------------------------------------------- losses


def gram_matrix(features: Float[Array, "*batch h w c"]) -> Float[Array, "*batch c c"]:
    r"""Gram matrix of feature maps, normalised by the number of positions.

    .. math::
       G_{cd} = \frac{1}{HW}\sum_{h=1}^{H}\sum_{w=1}^{W} F_{hwc}\,F_{hwd}
       \quad(\texttt{einsum("...hwc,...hwd->...cd")} / HW)

    Symmetric positive semi-definite (:math:`G = \tfrac{1}{HW}\Phi^\top\Phi` with :math:`\Phi`
    the ``[HW, C]`` matrix of positions), and unchanged by any permutation of the positions.
    The :math:`1/HW` makes layers of different resolution comparable (Gatys et al. divide the
    loss by :math:`4N^2M^2` instead).

    Args:
      features: feature maps ``[*batch, H, W, C]``.

    Returns:
      ``[*batch, C, C]``.

    References:
      Gatys, Ecker, Bethge, *A Neural Algorithm of Artistic Style*, 2015,
      https://arxiv.org/abs/1508.06576

    Derivation: derivations/17-style-transfer.md
    """
    features = _check_maps("features", features)
    h, w = features.shape[-3:-1]
    return jnp.einsum("...hwc,...hwd->...cd", features, features) / (h * w)  # [*batch, C, C]


def content_loss(
    features: Float[Array, "*batch h w c"], target: Float[Array, "*batch h w c"]
) -> Float[Array, "*batch"]:
    r"""Mean squared difference of feature maps, :math:`\frac{1}{HWC}\sum (F - P)^2`.

    Args:
      features: the image's maps :math:`F`, ``[*batch, H, W, C]``.
      target: the content image's maps :math:`P`, the same shape.

    Returns:
      ``[*batch]``.

    Derivation: derivations/17-style-transfer.md
    """
    features, target = _check_maps("features", features), _check_maps("target", target)
    _checks.same_shape(features=features, target=target)
    return jnp.mean(jnp.square(features - target), axis=(-3, -2, -1))


def style_loss(
    features: Sequence[Float[Array, "*batch h w c"]],
    target_grams: Sequence[Float[Array, "*batch c c"]],
    weights: Sequence[float] | None = None,
) -> Float[Array, "*batch"]:
    r"""Weighted sum over layers of the mean squared difference of Gram matrices.

    .. math::
       \mathcal L_{\text{style}} = \sum_l w_l\,\frac{1}{C_l^2}\sum_{c,d}
       \big(G^{l}_{cd} - A^{l}_{cd}\big)^2

    with :math:`G^l` = :func:`gram_matrix` of the image's layer :math:`l` and :math:`A^l` the
    style image's. (Gatys et al.'s extra factor :math:`\tfrac14` is dropped.)

    Args:
      features: one ``[*batch, H_l, W_l, C_l]`` map per layer.
      target_grams: the style image's Gram matrices, ``[*batch, C_l, C_l]`` per layer (already
        broadcast to the batch).
      weights: :math:`w_l \ge 0`, one per layer; ``None`` means equal weights
        :math:`1/L`.

    Returns:
      ``[*batch]``; 0 when the Gram matrices match.

    Derivation: derivations/17-style-transfer.md
    """
    features, target_grams = list(features), list(target_grams)
    if not features or len(features) != len(target_grams):
        raise ValueError(
            f"features and target_grams must be non-empty lists of equal length, got "
            f"{len(features)} and {len(target_grams)}"
        )
    if weights is None:
        weights = [1.0 / len(features)] * len(features)
    weights = list(weights)
    if len(weights) != len(features) or any(not w >= 0 for w in weights):
        raise ValueError(
            f"weights must be {len(features)} non-negative numbers (one per layer), got {weights}"
        )
    total = 0.0
    for layer, (f, a, w) in enumerate(zip(features, target_grams, weights, strict=True)):
        g = gram_matrix(f)
        if g.shape != jnp.shape(a):
            raise ValueError(
                f"target_grams[{layer}] must have shape {g.shape} (the Gram matrix of "
                f"features[{layer}]), got {jnp.shape(a)}"
            )
        total = total + w * jnp.mean(jnp.square(g - a), axis=(-2, -1))
    return total


def total_variation(images: Float[Array, "*batch h w c"], power: int = 2) -> Float[Array, "*batch"]:
    r"""Total variation: summed differences of vertically and horizontally adjacent pixels.

    .. math::
       \mathrm{TV}_p(x) = \sum_{h,w,c} |x_{h+1,w,c} - x_{h,w,c}|^p + |x_{h,w+1,c} - x_{h,w,c}|^p

    (anisotropic; ``power=1`` is the classic TV norm, ``power=2`` the smooth version used for
    image synthesis). Penalising it removes the high-frequency checkerboard noise that pixel
    optimisation against conv features produces.

    Args:
      images: ``[*batch, H, W, C]``.
      power: 1 or 2.

    Returns:
      ``[*batch]``.

    References:
      Mahendran & Vedaldi, *Understanding Deep Image Representations by Inverting Them*, 2015,
      https://arxiv.org/abs/1412.0035

    Derivation: derivations/17-style-transfer.md
    """
    images = _check_maps("images", images)
    if power not in (1, 2):
        raise ValueError(f"power must be 1 or 2, got {power!r}")
    dh = images[..., 1:, :, :] - images[..., :-1, :, :]  # [*batch, H-1, W, C]
    dw = images[..., :, 1:, :] - images[..., :, :-1, :]  # [*batch, H, W-1, C]
    f = jnp.abs if power == 1 else jnp.square
    return jnp.sum(f(dh), axis=(-3, -2, -1)) + jnp.sum(f(dw), axis=(-3, -2, -1))


# ----------------------------------------------------------------------------- features


def random_feature_kernels(
    key: PRNGKeyArray,
    channels: int = 3,
    num_scales: int = len(_FACTORS),
    kernel_size: int = _KERNEL,
    filters: int = _FILTERS,
) -> list[jax.Array]:
    r"""Random convolution kernels, one bank per scale: ``[k, k, channels, filters]`` each.

    Entries :math:`\sim\mathcal N(0, 1/(k^2 C))` (fan-in scaling), then each filter's mean over
    its :math:`k^2C` weights is removed so that a flat image gives zero response: only
    structure, not brightness, drives the features. Independent draws per scale.

    References:
      Ustyuzhaninov, Brendel, Gatys, Bethge, *What does it take to generate natural textures?*,
      ICLR 2017, https://openreview.net/forum?id=BJhZeLsxx

    Derivation: derivations/17-style-transfer.md
    """
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size!r}")
    for name, value in (("num_scales", num_scales), ("filters", filters), ("channels", channels)):
        _checks.positive_int(name, value)
    k = kernel_size
    kernels = []
    for sub in jax.random.split(key, num_scales):
        w = jax.random.normal(sub, (k, k, channels, filters)) / np.sqrt(k * k * channels)
        kernels.append(w - jnp.mean(w, axis=(0, 1, 2), keepdims=True))
    return kernels


def average_pool(images: Float[Array, "b h w c"], factor: int) -> Float[Array, "b h2 w2 c"]:
    """Mean over non-overlapping ``factor x factor`` blocks; ``H`` and ``W`` must be multiples
    of ``factor``.

    Derivation: derivations/17-style-transfer.md
    """
    b, h, w, c = images.shape
    if h % factor or w % factor:
        raise ValueError(f"image size {(h, w)} must be a multiple of the pooling factor {factor}")
    blocks = images.reshape(b, h // factor, factor, w // factor, factor, c)
    return blocks.mean(axis=(2, 4))  # [b, h / factor, w / factor, c]


def random_features(
    kernels: Sequence[jax.Array],
    images: Float[Array, "b h w c"],
    factors: Sequence[int] = _FACTORS,
) -> list[jax.Array]:
    r"""One layer of random filters over an image pyramid:
    :math:`F^l = \mathrm{ReLU}\big(W_l * \mathrm{pool}_{f_l}(x - \tfrac12)\big)`.

    Scale :math:`l` average-pools the image by :math:`f_l` (1, 2, 4, 8 by default) and
    convolves it ("same" padding) with its own random bank, so a :math:`k\times k` kernel sees
    :math:`k f_l` pixels: with :math:`k = 5`, receptive fields of 5 to 40 pixels. Ustyuzhaninov
    et al. reach the large scales with large kernels (up to :math:`55\times 55`) at full
    resolution; the pyramid gives the same spread of receptive fields with :math:`5\times5`
    kernels. The convolution is :func:`genjax.nn.layers.strided_conv`.

    Args:
      kernels: from :func:`random_feature_kernels`, one per factor.
      images: ``[B, H, W, C]``, ``H`` and ``W`` multiples of every factor.
      factors: pooling factor per scale.

    Returns:
      One ``[B, H / f_l, W / f_l, filters]`` map per scale.

    Derivation: derivations/17-style-transfer.md
    """
    images = _check_maps("images", images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape [B, H, W, C], got {images.shape}")
    if len(kernels) != len(factors):
        raise ValueError(f"need one kernel bank per factor, got {len(kernels)} and {factors}")
    out = []
    for w, f in zip(kernels, factors, strict=True):
        if w.shape[2] != images.shape[-1]:
            raise ValueError(
                f"kernels expect {w.shape[2]} channels, images have {images.shape[-1]}"
            )
        x = average_pool(images - 0.5, f)  # [B, H/f, W/f, C]
        out.append(jax.nn.relu(strided_conv(x, w, 1, w.shape[0] // 2)))  # [B, H/f, W/f, F]
    return out


def vgg_features(
    path: str, blocks: tuple[tuple[int, ...], ...] | None = None, scale: float = 1e-3
) -> Features:
    r"""Gatys' choice of features: a VGG network's block outputs, with weights read from a local
    ``.npz`` file (:func:`genjax.classifier.load_vgg_extractor`; nothing is downloaded).

    Images in [0, 1] go through Keras' VGG preprocessing (BGR, 0–255, mean-centred); the maps are
    multiplied by ``scale`` so that their Gram matrices have magnitudes comparable to
    :func:`random_features` and the default weights stay usable.

    Args:
      path: the ``.npz`` (keys ``block{b}_conv{c}/kernel`` and ``/bias``).
      blocks: the architecture the file holds; ``None`` = VGG-16.
      scale: factor on every map.

    Returns:
      ``features(images [B, H, W, 3]) -> [one map per block]``, differentiable.

    Derivation: derivations/17-style-transfer.md
    """
    from genjax import classifier

    extractor = classifier.load_vgg_extractor(path, blocks or classifier.VGG16_BLOCKS)

    def features(images):
        maps = extractor.module.apply({"params": extractor.params}, extractor._prepare(images))
        return [scale * m for m in maps]

    return features


# ----------------------------------------------------------------------------- stylisation


class StyleTargets(NamedTuple):
    """What the objective compares against: content maps :math:`P^l` and style Gram matrices
    :math:`A^l`, one per layer.

    Derivation: derivations/17-style-transfer.md
    """

    content: list[jax.Array]
    grams: list[jax.Array]


def style_targets(features: Features, content: jax.Array, style: jax.Array) -> StyleTargets:
    """Content maps of ``content`` and Gram matrices of ``style`` (images ``[1, H, W, C]``).

    Derivation: derivations/17-style-transfer.md
    """
    return StyleTargets(list(features(content)), [gram_matrix(f) for f in features(style)])


def stylization_loss(
    image: Float[Array, "1 h w c"],
    targets: StyleTargets,
    features: Features,
    *,
    content_weight: float = 1.0,
    style_weight: float = 1.0,
    tv_weight: float = 0.0,
    content_layers: Sequence[int] = (0,),
    layer_weights: Sequence[float] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    r"""The Gatys objective for one image.

    .. math::
       \mathcal L(x) = \alpha\sum_{l \in \mathcal C}\mathcal L_{\text{content}}(F^l(x), P^l)
       + \beta\,\mathcal L_{\text{style}}(\{F^l(x)\}, \{A^l\}) + \gamma\,\mathrm{TV}_2(x)

    Args:
      image: ``[1, H, W, C]`` in [0, 1].
      targets: from :func:`style_targets`.
      features: the extractor, ``images -> [maps]``.
      content_weight, style_weight, tv_weight: :math:`\alpha, \beta, \gamma`.
      content_layers: indices of the maps compared for content.
      layer_weights: per-layer style weights (see :func:`style_loss`).

    Returns:
      ``(loss, {"content": ..., "style": ..., "tv": ...})``, scalars (unweighted parts).

    Derivation: derivations/17-style-transfer.md
    """
    maps = list(features(image))
    content = sum(content_loss(maps[i], targets.content[i])[0] for i in content_layers)
    style = style_loss(maps, targets.grams, layer_weights)[0]
    tv = total_variation(image)[0]
    loss = content_weight * content + style_weight * style + tv_weight * tv
    return loss, {"content": content, "style": style, "tv": tv}


def logit(p: jax.Array, eps: float = 1e-3) -> jax.Array:
    r"""The image's free parameters :math:`z = \log p - \log(1 - p)` of pixels ``p`` clipped to
    ``[eps, 1 - eps]``.

    This is ``jax.scipy.special.logit(jnp.clip(p, eps, 1 - eps))``; the clip keeps pixels at
    exactly 0 or 1 at finite logits, so that :math:`z_0` of the content image can move.

    Derivation: derivations/17-style-transfer.md
    """
    p = jnp.clip(p, eps, 1.0 - eps)
    return jnp.log(p) - jnp.log1p(-p)


class StyleResult(NamedTuple):
    """``image [1, H, W, C]`` in [0, 1] and per-step ``history`` of the loss and its parts
    (``"loss"``, ``"content"``, ``"style"``, ``"tv"``; each ``[steps + 1]``, entry 0 at the
    start).

    Derivation: derivations/17-style-transfer.md
    """

    image: jax.Array
    history: dict[str, np.ndarray]


def stylize(
    content: Float[Array, "1 h w c"],
    style: Float[Array, "1 h2 w2 c"],
    features: Features | None = None,
    *,
    steps: int = 300,
    lr: float = 0.05,
    content_weight: float = 1.0,
    style_weight: float = 1.0,
    tv_weight: float = 0.0,
    content_layers: Sequence[int] = (0,),
    layer_weights: Sequence[float] | None = None,
) -> StyleResult:
    r"""Gatys stylisation: minimise :func:`stylization_loss` over the pixels with Adam.

    The image is parameterised as :math:`x = \sigma(z)` so it stays in (0, 1) without clipping,
    starts from the content image (:math:`z_0 = \operatorname{logit}(\text{content})`), and the
    ``steps`` Adam updates run in one jitted ``jax.lax.scan``. The style image may have another
    size than the content (Gram matrices are :math:`C\times C` whatever the size).

    Args:
      content: ``[1, H, W, C]`` in [0, 1].
      style: ``[1, H', W', C]`` in [0, 1].
      features: the extractor; ``None`` is the module's default, :func:`random_features` with
        :func:`random_feature_kernels` drawn from ``jax.random.key(0)`` (fixed, so a call is
        reproducible; ``H`` and ``W`` must then be multiples of 8).
      steps: Adam updates.
      lr: Adam learning rate on :math:`z`.
      content_weight, style_weight, tv_weight, content_layers, layer_weights: see
        :func:`stylization_loss`.

    Returns:
      :class:`StyleResult`.

    References:
      Gatys, Ecker, Bethge, *Image Style Transfer Using Convolutional Neural Networks*, CVPR
      2016.

    Derivation: derivations/17-style-transfer.md
    """
    content, style = jnp.asarray(content, jnp.float32), jnp.asarray(style, jnp.float32)
    for name, x in (("content", content), ("style", style)):
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"{name} must have shape [1, H, W, C], got {x.shape}")
    if content.shape[-1] != style.shape[-1]:
        raise ValueError(
            f"content and style must have the same channels, got {content.shape[-1]} and "
            f"{style.shape[-1]}"
        )
    _checks.positive_int("steps", steps)
    if features is None:
        kernels = random_feature_kernels(jax.random.key(0), channels=content.shape[-1])
        features = functools.partial(random_features, kernels)
    weights = dict(
        content_weight=content_weight,
        style_weight=style_weight,
        tv_weight=tv_weight,
        content_layers=tuple(content_layers),
        layer_weights=layer_weights,
    )
    tx = optax.adam(lr)

    @jax.jit
    def run(content, style):
        targets = style_targets(features, content, style)

        def objective(z):
            return stylization_loss(jax.nn.sigmoid(z), targets, features, **weights)

        def step(carry, _):
            z, opt_state = carry
            (loss, parts), grad = jax.value_and_grad(objective, has_aux=True)(z)
            updates, opt_state = tx.update(grad, opt_state, z)
            return (optax.apply_updates(z, updates), opt_state), {"loss": loss, **parts}

        z0 = logit(content)
        (z, _), history = jax.lax.scan(step, (z0, tx.init(z0)), length=steps)
        final_loss, final_parts = objective(z)
        final = {"loss": final_loss, **final_parts}
        history = {k: jnp.concatenate([v, final[k][None]]) for k, v in history.items()}
        return jax.nn.sigmoid(z), history

    image, history = run(content, style)
    return StyleResult(image, {k: np.asarray(v) for k, v in history.items()})


# ----------------------------------------------------------------------------- example images


PATTERNS = ("shapes", "stripes", "checks", "waves")


def pattern(name: str, size: int = 48) -> np.ndarray:
    """A generated RGB image ``[1, size, size, 3]`` float32 in [0, 1].

    * ``"shapes"``: a blue disc and a red square on a vertical grey gradient (content);
    * ``"stripes"``: thin diagonal yellow/purple stripes (style);
    * ``"checks"``: a small green/orange checkerboard (style);
    * ``"waves"``: interfering sinusoids in cyan and magenta (style).

    Derivation: derivations/17-style-transfer.md
    """
    if name not in PATTERNS:
        raise ValueError(f"pattern name must be one of {PATTERNS}, got {name!r}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # [size, size] each
    if name == "shapes":
        img = np.repeat((0.35 + 0.4 * yy)[..., None], 3, axis=2)
        disc = (xx - 0.33) ** 2 + (yy - 0.4) ** 2 < 0.2**2
        square = (np.abs(xx - 0.7) < 0.15) & (np.abs(yy - 0.68) < 0.15)
        img[disc] = (0.15, 0.3, 0.85)
        img[square] = (0.85, 0.2, 0.15)
    elif name == "stripes":
        t = (np.sin(2 * np.pi * (xx + yy) * size / 6) > 0)[..., None]
        img = np.where(t, np.array([0.95, 0.85, 0.2]), np.array([0.35, 0.1, 0.5]))
    elif name == "checks":
        t = (((xx * size) // 4 + (yy * size) // 4) % 2 == 0)[..., None]
        img = np.where(t, np.array([0.2, 0.7, 0.3]), np.array([0.95, 0.55, 0.1]))
    else:
        t = 0.5 + 0.25 * (np.sin(2 * np.pi * xx * 5) + np.sin(2 * np.pi * (xx - yy) * 7))
        img = t[..., None] * np.array([0.1, 0.9, 0.9]) + (1 - t[..., None]) * np.array(
            [0.9, 0.1, 0.7]
        )
    return np.asarray(img, np.float32)[None]  # [1, size, size, 3]


def load_image(source: str, size: int) -> np.ndarray:
    """A content or style image ``[1, size, size, 3]`` in [0, 1]: a :func:`pattern` name, or the
    path of a PNG/JPEG file (grey is repeated to RGB, alpha dropped, resized bilinearly).

    Derivation: derivations/17-style-transfer.md
    """
    if source in PATTERNS:
        return pattern(source, size)
    import matplotlib.image

    try:
        img = np.asarray(matplotlib.image.imread(source), np.float32)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{source!r} is neither an image file nor a pattern name ({', '.join(PATTERNS)})"
        ) from None
    if img.max() > 1.0:  # 8-bit JPEG
        img = img / 255.0
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    resized = jax.image.resize(jnp.asarray(img), (size, size, 3), "bilinear")
    return np.clip(np.asarray(resized), 0.0, 1.0)[None]  # [1, size, size, 3]


def plot_history(history: dict[str, np.ndarray], path) -> Path:
    """Style loss (log scale) and content loss of a :class:`StyleResult` history against the
    Adam step, drawn by :func:`genjax.viz.twin_curves`; returns the PNG's path.

    Derivation: derivations/17-style-transfer.md
    """
    from genjax import viz

    reduction = history["style"][0] / history["style"][-1]
    return viz.twin_curves(
        ("style loss", history["style"]),
        ("content loss", history["content"]),
        path,
        log_left=True,
        xlabel="Adam step",
        title=f"style loss reduced {reduction:.1f}x",
    )
