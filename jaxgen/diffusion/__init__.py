"""Diffusion building blocks shared by DDPM and unCLIP: schedules, forward process, losses,
samplers and classifier-free guidance."""

from jaxgen.diffusion.losses import WEIGHTINGS, diffusion_loss, min_snr_weight
from jaxgen.diffusion.process import (
    PREDICTION_TYPES,
    eps_from_v,
    eps_from_x0,
    predict_x0_eps,
    q_mean_variance,
    q_posterior_mean_variance,
    q_sample,
    target_for,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from jaxgen.diffusion.samplers import (
    ancestral_sample,
    ancestral_step_mean_std,
    classifier_free_guidance,
    ddim_sample,
    ddim_step_mean_std,
    ddim_timesteps,
    guided_model_fn,
)
from jaxgen.diffusion.schedules import (
    BETA_SCHEDULES,
    Schedule,
    cosine_beta_schedule,
    linear_beta_schedule,
    make_schedule,
    schedule_from_betas,
)

__all__ = [
    "BETA_SCHEDULES",
    "PREDICTION_TYPES",
    "WEIGHTINGS",
    "Schedule",
    "ancestral_sample",
    "ancestral_step_mean_std",
    "classifier_free_guidance",
    "cosine_beta_schedule",
    "ddim_sample",
    "ddim_step_mean_std",
    "ddim_timesteps",
    "diffusion_loss",
    "eps_from_v",
    "eps_from_x0",
    "guided_model_fn",
    "linear_beta_schedule",
    "make_schedule",
    "min_snr_weight",
    "predict_x0_eps",
    "q_mean_variance",
    "q_posterior_mean_variance",
    "q_sample",
    "schedule_from_betas",
    "target_for",
    "v_from_x0_eps",
    "x0_from_eps",
    "x0_from_v",
]
