"""The project's samplers against diffusers' (a dev dependency): `scheduler_config` written to a folder as
scheduler_config.json, loaded by `DDIMScheduler` and `DPMSolverMultistepScheduler` as it is, gives the same timesteps and,
over whole runs with a fixed deterministic model (the exact Gaussian denoiser), the same samples to float32 precision.

Settings that make the two agree (all in the config unless said here):
- `set_alpha_to_one=True`, `steps_offset=0`: 0-based timesteps, and the clean image at ᾱ = 1 after the last step;
- DDIM: `clip_sample` for x̂_0 clipping, and `step(..., use_clipped_model_output=True)` (a step argument, not a config
  entry), because the project recomputes ε̂ from the clipped x̂_0; DDIMScheduler takes t' = t − T//S, so it matches only
  when the number of steps S divides T; the project's 'uniform' spacing is diffusers' 'leading', 'trailing' is 'trailing';
- DPM-Solver++(2M): `algorithm_type='dpmsolver++'`, `solver_order=2`, `solver_type='midpoint'`,
  `final_sigmas_type='zero'` (the last step is first order, down to σ = 0, as the project's); clipping is
  `thresholding=True` with `sample_max_value=1`, which is plain clipping to [−1, 1]; 'trailing' spacing, any S."""
import math
import pytest
import torch

diffusers = pytest.importorskip('diffusers')
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from face_diffusion.forward import NoiseSchedule, scheduler_config, PREDICTION_TYPES
from face_diffusion.sampling import DDIMSampler, DPMSolverSampler, GaussianOracle

T = 1000
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')   # inside diffusers, numpy 2


def saved_and_loaded(scheduler_class, schedule, objective, tmp_path, clip_x0=True, **override):
    "scheduler_config written as JSON, then loaded by diffusers from the folder, as a run folder would be."
    import json
    (tmp_path / 'scheduler_config.json').write_text(json.dumps(scheduler_config(schedule, objective, clip_x0)))
    scheduler = scheduler_class.from_pretrained(tmp_path)
    return scheduler_class.from_config(scheduler.config, **override) if override else scheduler


def float32_tolerance(schedule, timesteps, objective, scale=1.0):
    """How far float32 rounding alone may move a sample (diffusers keeps ᾱ in float32; the project works out each step's
    coefficients in float64): 1e-5 of the samples' scale, times √(ᾱ_t'/ᾱ_t) with ε-prediction, whose
    x̂_0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t divides by √ᾱ_t (about 3000× at t = T−1 of the cosine schedule); plus, near t = 0, the
    rounding of a float32 1 − ᾱ_t', which moves the weight √(1−ᾱ_t') of ε̂ (up to about 4) by 2⁻²⁴ / (2√(1−ᾱ_t'))."""
    ab = schedule.f64.alphas_cumprod.tolist()
    ts = timesteps.tolist()
    pairs = [(t, tn) for t, tn in zip(ts, ts[1:] + [-1]) if tn >= 0]
    growth = max([1.0] + [math.sqrt(ab[tn] / ab[t]) for t, tn in pairs]) if objective == 'eps' else 1.0
    weight = max([0.0] + [4 * 2 ** -24 / (2 * math.sqrt(1 - ab[tn])) for _, tn in pairs])
    return scale * (1e-5 * growth + weight)


def run_both(ours, theirs, oracle, x_T, step_kwargs=None, noises=None):
    "The same whole run through our sampler and diffusers' scheduler: the largest difference after any step."
    x_ours, x_theirs, worst = x_T.clone(), x_T.clone(), 0.0
    for i, t in enumerate(ours.timesteps.tolist()):
        t_batch = torch.full((len(x_T),), t)
        z = noises[i] if noises is not None else None
        x_ours = ours.step(oracle(x_ours, t_batch), t, x_ours, noise=z).prev_sample
        kw = dict(step_kwargs or {}, **({'variance_noise': z} if z is not None else {}))
        x_theirs = theirs.step(oracle(x_theirs, t_batch), t, x_theirs, **kw).prev_sample
        worst = max(worst, (x_ours - x_theirs).abs().max().item())
    return worst, x_ours


@pytest.mark.parametrize('kind', ['linear', 'cosine'])
@pytest.mark.parametrize('objective', ['eps', 'v', 'x0'])
def test_config_loads_with_the_same_alphas(kind, objective, tmp_path):
    schedule = NoiseSchedule(kind, T)
    for cls in (DDIMScheduler, DPMSolverMultistepScheduler):
        sch = saved_and_loaded(cls, schedule, objective, tmp_path)
        assert sch.config.prediction_type == PREDICTION_TYPES[objective] and sch.config.num_train_timesteps == T
        # float32 throughout diffusers: 1 − β for the cosine schedule's last β = 0.999 keeps only ~4 digits
        torch.testing.assert_close(sch.alphas_cumprod.double(), schedule.f64.alphas_cumprod, rtol=5e-5, atol=0)


@pytest.mark.parametrize('clip_x0', [False, True])
@pytest.mark.parametrize('objective', ['eps', 'v'])
@pytest.mark.parametrize('kind', ['linear', 'cosine'])
@pytest.mark.parametrize('spacing,diffusers_spacing,steps', [('trailing', 'trailing', 10), ('uniform', 'leading', 20)])
def test_ddim_equals_diffusers(kind, objective, clip_x0, spacing, diffusers_spacing, steps, tmp_path):
    schedule = NoiseSchedule(kind, T)
    ours = DDIMSampler(schedule, objective, steps=steps, eta=0.0, spacing=spacing, clip_x0=clip_x0)
    theirs = saved_and_loaded(DDIMScheduler, schedule, objective, tmp_path, clip_x0, timestep_spacing=diffusers_spacing)
    theirs.set_timesteps(steps)
    assert theirs.timesteps.tolist() == ours.timesteps.tolist()
    oracle = GaussianOracle(schedule, objective, mean=0.1, std=0.6)
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * (2.0 if clip_x0 else 1.0)   # ×2: clipping active
    worst, x = run_both(ours, theirs, oracle, x_T, step_kwargs={'use_clipped_model_output': True})
    assert worst < float32_tolerance(schedule, ours.timesteps, objective, max(1.0, x.abs().max().item())), worst


def test_ddim_with_fresh_noise_equals_diffusers(tmp_path):
    "η > 0 with the same z: diffusers' σ_t (its `eta`, `variance_noise`) is the project's."
    schedule = NoiseSchedule('cosine', T)
    ours = DDIMSampler(schedule, 'v', steps=25, eta=0.5, spacing='trailing')
    theirs = saved_and_loaded(DDIMScheduler, schedule, 'v', tmp_path)
    theirs.set_timesteps(25)
    noises = torch.randn(25, 4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    worst, _ = run_both(ours, theirs, GaussianOracle(schedule, 'v', 0.1, 0.6), x_T,
                        step_kwargs={'eta': 0.5, 'use_clipped_model_output': True}, noises=noises)
    assert worst < 1e-5, worst


@pytest.mark.parametrize('clip_x0', [False, True])
@pytest.mark.parametrize('objective', ['eps', 'v'])
@pytest.mark.parametrize('kind', ['linear', 'cosine'])
@pytest.mark.parametrize('steps', [7, 20])
def test_dpm_solver_equals_diffusers(kind, objective, clip_x0, steps, tmp_path):
    schedule = NoiseSchedule(kind, T)
    ours = DPMSolverSampler(schedule, objective, steps=steps, spacing='trailing', clip_x0=clip_x0)
    theirs = saved_and_loaded(DPMSolverMultistepScheduler, schedule, objective, tmp_path, clip_x0)
    theirs.set_timesteps(steps)
    assert theirs.timesteps.tolist() == ours.timesteps.tolist()             # 7 steps: T/S is not a whole number
    oracle = GaussianOracle(schedule, objective, mean=0.1, std=0.6)
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * (2.0 if clip_x0 else 1.0)
    ours.reset()
    worst, x = run_both(ours, theirs, oracle, x_T)
    assert worst < float32_tolerance(schedule, ours.timesteps, objective, max(1.0, x.abs().max().item())), worst


def test_dpm_solver_second_order_is_what_is_compared(tmp_path):
    "The comparison can tell first from second order: a first-order diffusers solver (DDIM) differs from ours by far more."
    schedule = NoiseSchedule('linear', T)
    ours = DPMSolverSampler(schedule, 'eps', steps=10, clip_x0=False)
    first_order = saved_and_loaded(DPMSolverMultistepScheduler, schedule, 'eps', tmp_path, False, solver_order=1)
    first_order.set_timesteps(10)
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    worst, _ = run_both(ours, first_order, GaussianOracle(schedule, 'eps', 0.1, 0.6), x_T)
    assert worst > 1e-3, worst
