"""Studies: sweeps of one setting across games, models or budgets, each with its own ``main``.

* :mod:`genjax.studies.gan_modes`: mode coverage of five GAN games on two 2-D mixtures
  (``python -m genjax.studies.gan_modes``).
"""

__all__: list[str] = []
