"""The one place that chooses how genjax's layers are computed on a backend
(:func:`conv_formulation`); :mod:`genjax.nn.layers` and :mod:`genjax.nn.norm` read it when a
function is traced.

Derivation: derivations/09-wgan.md
"""

import os

import jax

FORMULATIONS = ("adjoint", "xla")  #: the values of :func:`conv_formulation`


def conv_formulation(backend: str | None = None) -> str:
    r"""How genjax's layers are computed and differentiated on ``backend``: the convolutions
    (:func:`genjax.nn.layers.strided_conv`, :func:`genjax.nn.layers.conv_transpose`), dense
    layers (:func:`genjax.nn.layers.dense`), biases and normalisations
    (:func:`genjax.nn.norm.group_norm`, :func:`genjax.nn.norm.batch_norm`).

    * ``"adjoint"`` (CPU): the forward pass is one XLA convolution in its canonical layout;
      a custom VJP writes the input gradient as the adjoint convolution (a transposed
      convolution for a strided one and vice versa, again canonical) and the kernel gradient,
      :math:`\partial L/\partial K_{p,q,c,o} = \sum_{b,i,j} \tilde x_{b, si+p, sj+q, c}\,
      \partial L/\partial y_{b,i,j,o}`, as one canonical convolution too (the channels
      :math:`c` as its batch, the batch :math:`b` as its features, :math:`\partial L/\partial y`
      as its kernel dilated by :math:`s`). Autodiff of an XLA convolution instead emits kernel
      gradients as convolutions in non-canonical layouts, which XLA's CPU backend runs through a
      slow generic loop (tens of times slower inside a ``lax.scan``; jax-ml/jax issue 12868).
      Dense layers multiply by explicitly transposed copies in their backward pass (XLA's CPU
      products with a transposed operand run 2-3x slower), biases and normalisations sum their
      gradients with :func:`genjax.nn.norm.channel_sums`, and the normalisations' gradients are
      their closed forms (derivations/11-ddpm.md, section 7). Reverse mode only: ``jax.jvp`` /
      ``jax.jacfwd`` through these layers raise.
    * ``"xla"`` (GPU, TPU): ``jax.lax.conv_general_dilated``, plain products, sums and
      normalisations, and their autodiff (cuDNN's kernels).

    The environment variable ``GENJAX_CONV`` (``"adjoint"`` or ``"xla"``), read when a function
    is traced, overrides the choice, e.g. ``GENJAX_CONV=xla`` for forward-mode derivatives on
    CPU. Both give the same numbers to float rounding (``tests/test_layers.py``).

    Args:
      backend: a JAX platform name; ``None`` for ``jax.default_backend()``.

    Returns:
      ``"adjoint"`` or ``"xla"``.

    Derivation: derivations/09-wgan.md
    """
    choice = os.environ.get("GENJAX_CONV")
    if choice is not None:
        if choice not in FORMULATIONS:
            raise ValueError(f"GENJAX_CONV must be one of {sorted(FORMULATIONS)}, got {choice!r}")
        return choice
    return "adjoint" if (backend or jax.default_backend()) == "cpu" else "xla"
