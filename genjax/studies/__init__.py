"""Studies: sweeps of one setting across games, models or budgets, each with its own ``main``.

* :mod:`genjax.studies.gan_modes`: mode coverage of five GAN games on two 2-D mixtures
  (``python -m genjax.studies.gan_modes``).
* :mod:`genjax.studies.style_gans`: DCGAN, ProGAN, StyleGAN and the BigGAN-style GAN at equal
  training time (``python -m genjax.studies.style_gans``).
* :mod:`genjax.studies.diffusion_curves`: FID over the guidance scale and over the number of
  sampling steps of a trained digits diffusion model (``quality_sweep``, ``plot_quality_curves``).
"""

__all__: list[str] = []
