r"""Denoising diffusion: schedules, the forward process, losses, learned variances and the exact
bound, the DDPM, DDIM and DPM-Solver++(2M) samplers, guidance.

The forward process adds Gaussian noise in :math:`T` small steps,
:math:`q(x_t \mid x_{t-1}) = N(\sqrt{\alpha_t}\,x_{t-1}, \beta_t I)`, so that
:math:`q(x_t \mid x_0) = N(\sqrt{\bar\alpha_t}\,x_0, (1-\bar\alpha_t) I)` with
:math:`\bar\alpha_t = \prod_{s \le t} \alpha_s`. A network learns to undo one step at a time.

**Time index convention.** Time steps are 0-based array indices: ``t`` runs over ``0 .. T-1``
and ``schedule.betas[t]`` is the paper's :math:`\beta_{t+1}`. So ``q_sample(key, schedule, x0,
t)`` draws the paper's :math:`x_{t+1}`, and the reverse step at ``t`` maps the paper's
:math:`x_{t+1}` to :math:`x_t`; the data is :math:`x_0` in both
(``tests/test_diffusion.py::test_time_index_convention``). Every ``t`` argument is a Python int,
a scalar or a ``[batch]`` int array; a scalar applies to the whole batch.

A denoiser is any ``model_fn(x_t, t) -> prediction`` with ``x_t [batch, ...]`` and ``t [batch]``
int32, returning an ε, :math:`x_0` or v prediction (``parameterization``). :class:`MLPDenoiser`
is the network for vector data, :class:`genjax.nn.unet.UNet` the one for images.

The code lives in private files by topic (``_schedules``, ``_training``: forward process,
parameterisations, losses and denoisers, ``_variances``: the reverse step's fixed or learned
variance, the exact bound and the hybrid loss, ``_sampling``: DDPM, DDIM and DPM-Solver++(2M),
``_guidance``); this module is the API.

References:
  Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, https://arxiv.org/abs/2006.11239

  Nichol & Dhariwal, *Improved Denoising Diffusion Probabilistic Models*, 2021,
  https://arxiv.org/abs/2102.09672

  Song et al., *Denoising Diffusion Implicit Models*, 2020, https://arxiv.org/abs/2010.02502

  Ho & Salimans, *Classifier-Free Diffusion Guidance*, 2022, https://arxiv.org/abs/2207.12598

  Lu et al., *DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models*,
  2022, https://arxiv.org/abs/2211.01095

Derivation: derivations/11-ddpm.md, derivations/12-guidance.md, derivations/13-ddim.md,
derivations/26-improved-diffusion.md
"""

from genjax.diffusion._guidance import (
    classifier_free_guidance,
    classifier_guidance,
    drop_labels,
    guidance_scale_from_ho_salimans,
    guided_model_fn,
)
from genjax.diffusion._sampling import (
    METHODS,
    ddim_step,
    ddim_timesteps,
    ddpm_step,
    dpm_solver_2m_coefficients,
    sample,
)
from genjax.diffusion._schedules import (
    Schedule,
    cosine_schedule,
    linear_schedule,
    quadratic_schedule,
    schedule_from_betas,
)
from genjax.diffusion._training import (
    PARAMETERIZATIONS,
    MLPDenoiser,
    ddpm_loss,
    from_x0_eps,
    gaussian_mixture_eps,
    loss_weights,
    q_posterior,
    q_sample,
    q_step,
    to_x0_eps,
    vlb_weights,
)
from genjax.diffusion._variances import (
    HYBRID_VLB_WEIGHT,
    VARIANCES,
    hybrid_loss,
    learned_log_variance,
    p_mean_variance,
    prior_kl,
    split_learned,
    vlb_nll,
    vlb_term,
)

__all__ = [
    "HYBRID_VLB_WEIGHT",
    "METHODS",
    "PARAMETERIZATIONS",
    "VARIANCES",
    "MLPDenoiser",
    "Schedule",
    "classifier_free_guidance",
    "classifier_guidance",
    "cosine_schedule",
    "ddim_step",
    "ddim_timesteps",
    "ddpm_loss",
    "ddpm_step",
    "dpm_solver_2m_coefficients",
    "drop_labels",
    "from_x0_eps",
    "gaussian_mixture_eps",
    "guidance_scale_from_ho_salimans",
    "guided_model_fn",
    "hybrid_loss",
    "learned_log_variance",
    "linear_schedule",
    "loss_weights",
    "p_mean_variance",
    "prior_kl",
    "q_posterior",
    "q_sample",
    "q_step",
    "quadratic_schedule",
    "sample",
    "schedule_from_betas",
    "split_learned",
    "to_x0_eps",
    "vlb_nll",
    "vlb_term",
    "vlb_weights",
]
