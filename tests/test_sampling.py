"""Sampling (chapters 05 and 06): each sampler step against an independent evaluation of its paper's equations
(plain numpy from the betas), the samplers against exact denoisers, the one sampling loop (reset, callback, condition,
NaN warning), reproducibility, trajectories, GIFs, bad input, and imports without ipywidgets or matplotlib."""
import math, subprocess, sys, warnings
from types import SimpleNamespace
import numpy as np
import pytest
import torch
from PIL import Image

from face_diffusion.forward import NoiseSchedule, OBJECTIVES, extract
from face_diffusion.sampling import (DDPMSampler, DDIMSampler, DPMSolverSampler, GaussianOracle, DatasetOracle, StepOutput, Trajectory,
                                     Sampler, TrajectoryRecorder, sample, sample_run, make_sampler, ddim_timesteps, frame_indices,
                                     slerp, save_denoising_gif, trajectory_frames, reverse_slider, first_faces, GIF_FACES,
                                     CountingModel, _fresh_noise)

T = 1000




def paper_alphas(betas):
    "ᾱ_t and ᾱ_{t−1} (ᾱ_{−1} = 1) in float64, from the betas alone."
    b = np.asarray(betas, np.float64)
    ab = np.cumprod(1 - b)
    return b, ab, np.r_[1.0, ab[:-1]]


def targets(objective, x0, eps, ab):
    "What a network with objective `objective` outputs for x_t = √ᾱ x_0 + √(1−ᾱ) ε (numpy)."
    return {'eps': eps, 'x0': x0, 'v': np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0}[objective]


# ---------------------------------------------------------------- DDPM: Ho et al. (2020), eq. 6–7 and Algorithm 2

def test_linear_betas_are_the_papers():
    "The linear schedule is Ho et al.'s β_1 = 1e-4 … β_T = 0.02, so the formulas below start from the paper's numbers."
    assert np.allclose(NoiseSchedule('linear', T).betas.double().numpy(), np.linspace(1e-4, 0.02, T), atol=1e-9)


@pytest.mark.parametrize('kind', ['linear', 'cosine'])
@pytest.mark.parametrize('variance', ['posterior', 'beta'])
@pytest.mark.parametrize('objective', OBJECTIVES)
def test_ddpm_step_matches_paper(kind, variance, objective):
    schedule = NoiseSchedule(kind, T)
    b, ab, ab_prev = paper_alphas(schedule.betas.double().numpy())
    rng = np.random.default_rng(0)
    sampler = DDPMSampler(schedule, objective, variance=variance, clip_x0=False)
    for t in [999, 700, 250, 10, 1, 0]:
        x0, eps, z = (rng.standard_normal((2, 3, 4, 4)) * 0.5 for _ in range(3))
        x_t = np.sqrt(ab[t]) * x0 + np.sqrt(1 - ab[t]) * eps                       # eq. 4
        out = sampler.step(torch.tensor(targets(objective, x0, eps, ab[t]), dtype=torch.float32), t,
                           torch.tensor(x_t, dtype=torch.float32), noise=torch.tensor(z, dtype=torch.float32))
        mean = (np.sqrt(ab_prev[t]) * b[t] / (1 - ab[t]) * x0
                + np.sqrt(1 - b[t]) * (1 - ab_prev[t]) / (1 - ab[t]) * x_t)       # μ̃_t, eq. 7
        if objective == 'eps':                                                      # Algorithm 2's form of the mean
            assert np.allclose(mean, (x_t - b[t] / np.sqrt(1 - ab[t]) * eps) / np.sqrt(1 - b[t]), atol=1e-9)
        var = (b[t] * (1 - ab_prev[t]) / (1 - ab[t])) if variance == 'posterior' else b[t]   # β̃_t or β_t
        want = mean + (np.sqrt(var) * z if t > 0 else 0)
        assert isinstance(out, StepOutput)
        assert np.allclose(out.prev_sample.double().numpy(), want, atol=2e-4), t
        tol = 2e-4 + 2e-7 / np.sqrt(ab[t])            # x̂_0 = x_t/√ᾱ − …: float32 rounding grows like 1/√ᾱ_t
        assert np.allclose(out.pred_original_sample.double().numpy(), x0, atol=tol), t


def test_ddpm_clips_x0_before_the_mean():
    schedule = NoiseSchedule('linear', T)
    b, ab, ab_prev = paper_alphas(schedule.betas.double().numpy())
    t, x_t, eps = 600, torch.randn(2, 3, 4, 4), 3 * torch.randn(2, 3, 4, 4)
    out = DDPMSampler(schedule, 'eps', clip_x0=True).step(eps, t, x_t, noise=torch.zeros_like(x_t))
    x0 = np.clip((x_t.double().numpy() - np.sqrt(1 - ab[t]) * eps.double().numpy()) / np.sqrt(ab[t]), -1, 1)
    mean = np.sqrt(ab_prev[t]) * b[t] / (1 - ab[t]) * x0 + np.sqrt(1 - b[t]) * (1 - ab_prev[t]) / (1 - ab[t]) * x_t.double().numpy()
    assert out.pred_original_sample.abs().max() <= 1 and np.allclose(out.prev_sample.numpy(), mean, atol=1e-4)


# ---------------------------------------------------------------- DDIM: Song et al. (2020), eq. 12 and 16

def paper_timesteps(spacing, steps):
    i = np.arange(steps)
    if spacing == 'uniform': ts = np.floor(i * T / steps)
    elif spacing == 'trailing': ts = np.round(np.arange(T, 0, -T / steps)) - 1          # diffusers' "trailing"
    else: ts = np.floor(np.linspace(0, np.sqrt(0.8 * T), steps) ** 2)
    return sorted(ts.astype(int).tolist(), reverse=True)


@pytest.mark.parametrize('spacing,steps', [('uniform', 10), ('uniform', 37), ('uniform', 1000), ('trailing', 10),
                                           ('trailing', 50), ('quadratic', 10), ('quadratic', 20)])
def test_ddim_timesteps(spacing, steps):
    assert ddim_timesteps(T, steps, spacing).tolist() == paper_timesteps(spacing, steps)


def test_ddim_quadratic_repeats_are_nudged_apart():
    ts = ddim_timesteps(T, 50, 'quadratic').tolist()
    assert len(set(ts)) == 50 and ts == sorted(ts, reverse=True) and ts[-1] == 0 and ts[0] <= T - 1


@pytest.mark.parametrize('spacing,steps', [('uniform', 10), ('uniform', 37), ('trailing', 25), ('quadratic', 20)])
@pytest.mark.parametrize('eta', [0.0, 0.5, 1.0])
@pytest.mark.parametrize('objective', OBJECTIVES)
def test_ddim_step_matches_paper(spacing, steps, eta, objective):
    schedule = NoiseSchedule('cosine' if spacing == 'trailing' else 'linear', T)
    _, ab, _ = paper_alphas(schedule.betas.double().numpy())
    sampler = DDIMSampler(schedule, objective, steps=steps, eta=eta, spacing=spacing, clip_x0=False)
    ts = sampler.timesteps.tolist()
    rng = np.random.default_rng(1)
    for k in [0, 1, len(ts) // 2, len(ts) - 2, len(ts) - 1]:
        t, tp = ts[k], (ts[k + 1] if k + 1 < len(ts) else -1)
        a, ap = ab[t], (ab[tp] if tp >= 0 else 1.0)                                  # ᾱ_t, ᾱ_{t'} (ᾱ_{−1} = 1)
        sigma = eta * np.sqrt((1 - ap) / (1 - a)) * np.sqrt(1 - a / ap)              # eq. 16
        c = sampler.coefficients(t)
        assert c['t_prev'] == tp and math.isclose(c['sigma'], sigma, rel_tol=1e-5, abs_tol=1e-9)
        assert math.isclose(c['x0'], np.sqrt(ap), rel_tol=1e-6) and math.isclose(c['eps'], np.sqrt(max(1 - ap - sigma ** 2, 0)), rel_tol=1e-5, abs_tol=1e-7)
        x0, eps, z = (rng.standard_normal((2, 3, 4, 4)) * 0.5 for _ in range(3))
        x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
        out = sampler.step(torch.tensor(targets(objective, x0, eps, a), dtype=torch.float32), t,
                           torch.tensor(x_t, dtype=torch.float32), noise=torch.tensor(z, dtype=torch.float32))
        want = np.sqrt(ap) * x0 + np.sqrt(1 - ap - sigma ** 2) * eps + sigma * z      # eq. 12
        assert np.allclose(out.prev_sample.double().numpy(), want, atol=3e-4), (t, tp)


def test_ddim_eta1_all_steps_has_ddpm_coefficients():
    schedule = NoiseSchedule('linear', T)
    b, ab, ab_prev = paper_alphas(schedule.betas.double().numpy())
    sampler = DDIMSampler(schedule, steps=T, eta=1.0)
    for t in [999, 500, 37, 1]:
        c = sampler.coefficients(t)
        a = ab[t]
        # written as weights of x̂_0 and x_t (ε̂ = (x_t − √ᾱ x̂_0)/√(1−ᾱ)) they are DDPM's posterior coefficients
        w_x0, w_xt = c['x0'] - c['eps'] * np.sqrt(a) / np.sqrt(1 - a), c['eps'] / np.sqrt(1 - a)
        assert math.isclose(w_x0, np.sqrt(ab_prev[t]) * b[t] / (1 - a), rel_tol=1e-4)
        assert math.isclose(w_xt, np.sqrt(1 - b[t]) * (1 - ab_prev[t]) / (1 - a), rel_tol=1e-4)
        assert math.isclose(c['sigma'] ** 2, b[t] * (1 - ab_prev[t]) / (1 - a), rel_tol=1e-4)


# ---------------------------------------------------------------- DPM-Solver++(2M): Lu et al. (2022), Algorithm 2

def paper_x0(objective, out, x, a, s):
    "x̂_0 from a network output (numpy): ε → (x − σ ε)/α, v → α x − σ v, x_0 → itself."
    return {'eps': (x - s * out) / a, 'v': a * x - s * out, 'x0': out}[objective]


@pytest.mark.parametrize('spacing,steps', [('trailing', 10), ('uniform', 37), ('quadratic', 20)])
@pytest.mark.parametrize('objective', OBJECTIVES)
@pytest.mark.parametrize('kind', ['linear', 'cosine'])
def test_dpm_solver_run_matches_paper(kind, spacing, steps, objective):
    "A whole run with arbitrary network outputs against Algorithm 2, written from λ_t = log(α_t/σ_t) in float64."
    schedule = NoiseSchedule(kind, T)
    _, ab, _ = paper_alphas(schedule.betas.double().numpy())
    sampler = DPMSolverSampler(schedule, objective, steps=steps, spacing=spacing, clip_x0=False)
    ts = sampler.timesteps.tolist()
    rng = np.random.default_rng(2)
    outs = [rng.standard_normal((2, 3, 4, 4)) for _ in ts]
    x_np = rng.standard_normal((2, 3, 4, 4))
    x = torch.tensor(x_np, dtype=torch.float32)
    alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    lam = np.log(alpha / sigma)
    x0s = []
    for i, t in enumerate(ts):
        x0s.append(paper_x0(objective, outs[i], x_np, alpha[t], sigma[t]))
        if i + 1 == len(ts): x_np = x0s[-1]                                         # to σ = 0: x_0 = x̂_0
        else:
            tn = ts[i + 1]
            h = lam[tn] - lam[t]
            if i == 0: d = x0s[-1]                                                  # first step: DDIM
            else:
                r = (lam[t] - lam[ts[i - 1]]) / h                                   # r_i = h_{i−1} / h_i
                d = (1 + 1 / (2 * r)) * x0s[-1] - 1 / (2 * r) * x0s[-2]             # D_i
            x_np = sigma[tn] / sigma[t] * x_np - alpha[tn] * (np.exp(-h) - 1) * d
        x = sampler.step(torch.tensor(outs[i], dtype=torch.float32), t, x).prev_sample
        scale = max(1.0, np.abs(x_np).max())
        assert np.allclose(x.double().numpy(), x_np, atol=2e-4 * scale, rtol=1e-4), (i, t)


def test_dpm_solver_restarts_at_its_first_timestep():
    "The remembered x̂_0 belongs to one run: a second run from the same noise gives the same images."
    schedule = NoiseSchedule('cosine', T)
    oracle = GaussianOracle(schedule, 'v', mean=0.1, std=0.4)
    sampler = DPMSolverSampler(schedule, 'v', steps=12)
    x_T = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample(oracle, sampler, 3, 8, x_T=x_T), sample(oracle, sampler, 3, 8, x_T=x_T))
    with pytest.raises(ValueError, match='not one of'): sampler.step(torch.zeros(1, 3, 8, 8), 500, torch.zeros(1, 3, 8, 8))


def test_dpm_solver_converges_faster_than_ddim():
    "Exact denoiser of N(μ, σ²) data, trailing spacing: DPM-Solver++ at 20 steps lands closer to σ² than DDIM at 100."
    schedule = NoiseSchedule('cosine', T)
    mu, sd = 0.2, 0.5
    oracle = GaussianOracle(schedule, 'eps', mean=mu, std=sd)
    x_T = torch.randn(256, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    err = lambda smp: abs(sample(oracle, smp, 256, 8, x_T=x_T).var().item() / sd ** 2 - 1)
    dpm20 = err(DPMSolverSampler(schedule, 'eps', steps=20, spacing='trailing', clip_x0=False))
    ddim20 = err(DDIMSampler(schedule, 'eps', steps=20, spacing='trailing', clip_x0=False))
    ddim100 = err(DDIMSampler(schedule, 'eps', steps=100, spacing='trailing', clip_x0=False))
    assert dpm20 < ddim20 / 4 and dpm20 < ddim100, (dpm20, ddim20, ddim100)


def test_make_sampler_defaults():
    schedule = NoiseSchedule('cosine', T)
    dpm, ddim = make_sampler('dpm++', schedule, 'v'), make_sampler('ddim', schedule, 'v')
    assert isinstance(dpm, DPMSolverSampler) and len(dpm) == 50 and dpm.spacing == 'trailing'
    assert isinstance(ddim, DDIMSampler) and len(ddim) == 50 and ddim.spacing == 'uniform'
    with pytest.raises(ValueError, match='deterministic'): make_sampler('dpm++', schedule, 'v', eta=0.3)


@pytest.mark.parametrize('objective', OBJECTIVES)
def test_ddim_eta1_all_steps_is_ddpm(objective):
    schedule = NoiseSchedule('linear', T)
    oracle = GaussianOracle(schedule, objective, mean=0.3, std=0.6)                   # clipping is active here
    a = sample(oracle, DDPMSampler(schedule, objective), 4, 8, generator=torch.Generator().manual_seed(5))
    b = sample(oracle, DDIMSampler(schedule, objective, steps=T, eta=1.0), 4, 8, generator=torch.Generator().manual_seed(5))
    assert (a - b).abs().max() < 1e-4


def test_ddim_eta0_is_deterministic():
    schedule = NoiseSchedule('cosine', T)
    oracle = GaussianOracle(schedule, 'v', mean=0.1, std=0.4)
    x_T = torch.randn(3, 3, 8, 8)
    runs = [sample(oracle, DDIMSampler(schedule, 'v', steps=25), 3, 8, x_T=x_T, generator=torch.Generator().manual_seed(s))
            for s in (0, 1)]
    assert torch.equal(runs[0], runs[1])
    noisy = [sample(oracle, DDIMSampler(schedule, 'v', steps=25, eta=0.7), 3, 8, x_T=x_T, generator=torch.Generator().manual_seed(s))
             for s in (0, 1)]
    assert not torch.allclose(noisy[0], noisy[1])


# ---------------------------------------------------------------- end to end: the exact denoiser for Gaussian data

def linear_chain_moments(betas, pairs, mu, var, sigma_fn, weights_fn, history=False):
    """Mean and variance of a reverse chain that is linear in x_t for N(μ, σ²) data (float64); with `history`, also
    those of x_t before each step."""
    _, ab, _ = paper_alphas(betas)
    m, v = 0.0, 1.0
    ms, vs = [], []
    for t, tp in pairs:
        ms.append(m); vs.append(v)
        a, ap = ab[t], (ab[tp] if tp >= 0 else 1.0)
        gain = np.sqrt(a) * var / (a * var + 1 - a)                                   # E[x_0|x_t] = μ + gain (x_t − √ᾱ μ)
        w0, wt = weights_fn(t, a, ap)                                                 # x_t' = w0 x̂_0 + wt x_t + s z
        s = sigma_fn(t, a, ap)
        A, B = w0 * gain + wt, w0 * mu * (1 - gain * np.sqrt(a))                      # = A x_t + B + s z
        m, v = A * m + B, A * A * v + s * s
    return (m, v, np.array(ms), np.array(vs)) if history else (m, v)


class Moments:
    "A `sample` callback: mean and variance over all images and pixels of x_t at every step."
    def __init__(self): self.mean, self.var = [], []

    def __call__(self, i, t, x_t, x0_hat):
        self.mean.append(x_t.double().mean().item()); self.var.append(x_t.double().var().item())


def worst_z(rec, ms, vs, n):
    "Largest |z| over the steps of the recorded mean and variance against the exact ones (n independent pixels)."
    zm = np.abs(np.array(rec.mean) - ms) / np.sqrt(vs / n)
    zv = np.abs(np.array(rec.var) / vs - 1) / np.sqrt(2 / n)
    return max(zm.max(), zv.max())


class HalvingDDPM(DDPMSampler):
    "The control, deliberately broken: x_{t−1} = ½ μ̃_t + 3 σ_t z at every step but the last (which returns x̂_0)."
    def step(self, model_output, t, x_t, generator=None, noise=None):
        z = _fresh_noise(x_t, noise, generator)
        mean, x0_hat = super().step(model_output, t, x_t, noise=torch.zeros_like(x_t))
        if int(t) == 0: return StepOutput(mean, x0_hat)
        return StepOutput(0.5 * mean + 3 * extract(self.sigmas(), t, x_t.shape) * z, x0_hat)


class ForgetfulDDIM(DDIMSampler):
    "The control, deliberately broken: accepts `steps` but visits all T timesteps."
    def __init__(self, schedule, objective='eps', steps=50, **kw): super().__init__(schedule, objective, steps=schedule.T, **kw)


@pytest.mark.parametrize('variance', ['posterior', 'beta'])
@pytest.mark.parametrize('objective', OBJECTIVES)
def test_ddpm_samples_gaussian_data(objective, variance):
    schedule, mu, sd = NoiseSchedule('linear', T), 0.2, 0.5
    b = schedule.betas.double().numpy()
    rec = Moments()
    x = sample(GaussianOracle(schedule, objective, mu, sd), DDPMSampler(schedule, objective, variance, clip_x0=False),
               32, 8, generator=torch.Generator().manual_seed(0), callback=rec)
    weights = lambda t, a, ap: (np.sqrt(ap) * b[t] / (1 - a), np.sqrt(1 - b[t]) * (1 - ap) / (1 - a))
    sig = lambda t, a, ap: 0.0 if t == 0 else np.sqrt(b[t] * (1 - ap) / (1 - a) if variance == 'posterior' else b[t])
    m, v, ms, vs = linear_chain_moments(b, [(t, t - 1) for t in range(T - 1, -1, -1)], mu, sd ** 2, sig, weights, history=True)
    n = x.numel()
    assert worst_z(rec, ms, vs, n) < 5                                                 # on the exact path at every step
    assert abs(x.mean().item() - m) < 5 * math.sqrt(v / n) and abs(x.var().item() / v - 1) < 5 * math.sqrt(2 / n)
    assert abs(m - mu) < 0.01 and abs(v / sd ** 2 - 1) < 0.03                         # the chain itself is right


@pytest.mark.parametrize('steps,spacing,eta', [(10, 'uniform', 0.0), (50, 'trailing', 0.0), (20, 'quadratic', 1.0),
                                               (100, 'uniform', 0.3)])
def test_ddim_samples_gaussian_data(steps, spacing, eta):
    schedule, mu, sd = NoiseSchedule('linear', T), -0.1, 0.7
    b = schedule.betas.double().numpy()
    smp = DDIMSampler(schedule, 'eps', steps=steps, eta=eta, spacing=spacing, clip_x0=False)
    rec = Moments()
    x = sample(GaussianOracle(schedule, 'eps', mu, sd), smp, 64, 8, generator=torch.Generator().manual_seed(0), callback=rec)
    sig = lambda t, a, ap: eta * np.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
    def weights(t, a, ap):
        k = np.sqrt(1 - ap - sig(t, a, ap) ** 2)
        return np.sqrt(ap) - k * np.sqrt(a) / np.sqrt(1 - a), k / np.sqrt(1 - a)
    ts = smp.timesteps.tolist()
    m, v, ms, vs = linear_chain_moments(b, list(zip(ts, ts[1:] + [-1])), mu, sd ** 2, sig, weights, history=True)
    n = x.numel()
    assert worst_z(rec, ms, vs, n) < 5                                                 # on the exact path at every step
    assert abs(x.mean().item() - m) < 5 * math.sqrt(v / n) and abs(x.var().item() / v - 1) < 5 * math.sqrt(2 / n)
    if steps >= 100: assert abs(v / sd ** 2 - 1) < 0.05


def test_ddim_inversion_round_trip():
    schedule = NoiseSchedule('linear', T)
    oracle = GaussianOracle(schedule, 'eps', 0.0, 0.6)
    x0 = 0.6 * torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    errs = []
    for steps in (20, 200):
        smp = DDIMSampler(schedule, 'eps', steps=steps, clip_x0=False)
        noise = smp.invert(oracle, x0)
        errs.append((sample(oracle, smp, 4, 8, x_T=noise) - x0).pow(2).mean().sqrt().item())
    assert errs[1] < errs[0] and errs[1] < 0.02
    assert 0.8 < noise.std().item() < 1.2                                              # it looks like noise


def test_the_step_by_step_check_fails_a_broken_sampler():
    "The control for the two tests above: halving the mean and tripling the noise is caught at the first steps."
    schedule, mu, sd = NoiseSchedule('linear', T), 0.2, 0.5
    b = schedule.betas.double().numpy()
    rec = Moments()
    x = sample(GaussianOracle(schedule, 'eps', mu, sd), HalvingDDPM(schedule, 'eps', clip_x0=False), 32, 8,
               generator=torch.Generator().manual_seed(0), callback=rec)
    weights = lambda t, a, ap: (np.sqrt(ap) * b[t] / (1 - a), np.sqrt(1 - b[t]) * (1 - ap) / (1 - a))
    sig = lambda t, a, ap: 0.0 if t == 0 else np.sqrt(b[t] * (1 - ap) / (1 - a))
    _, _, ms, vs = linear_chain_moments(b, [(t, t - 1) for t in range(T - 1, -1, -1)], mu, sd ** 2, sig, weights, history=True)
    assert worst_z(rec, ms, vs, x.numel()) > 5


CHI2_3DOF_P001 = 16.27                                                                 # P(χ² with 3 d.o.f. > 16.27) = 0.001


@pytest.mark.parametrize('name', ['ddpm', 'ddim', 'dpm++', 'broken'])
def test_memoriser_samples_each_training_image_equally_often(name):
    """Exact denoiser of 4 images: every sample is one of them, and each comes out about n/4 times (χ² test); the broken
    sampler (the control) also lands on a training image every time, but always the same one."""
    schedule = NoiseSchedule('linear', T)
    train = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    oracle = DatasetOracle(schedule, train, 'eps')
    smp = {'ddpm': DDPMSampler(schedule), 'ddim': DDIMSampler(schedule, steps=50, eta=0.5),
           'dpm++': DPMSolverSampler(schedule, steps=20), 'broken': HalvingDDPM(schedule)}[name]
    n = 200
    x = sample(oracle, smp, n, 8, generator=torch.Generator().manual_seed(1))
    d = torch.cdist(x.flatten(1), train.flatten(1))
    assert (d.min(1).values / x[0].numel() ** 0.5).max() < 1e-3                        # on a training image
    counts = d.argmin(1).bincount(minlength=4).double()
    chi2 = ((counts - n / 4) ** 2 / (n / 4)).sum().item()
    assert (chi2 < CHI2_3DOF_P001) == (name != 'broken'), (counts.tolist(), chi2)


def test_one_network_call_per_step():
    "Cost counted, not timed: each sampler calls the model once per timestep, for the whole batch; the control fails."
    schedule = NoiseSchedule('linear', 100)
    counter = CountingModel(GaussianOracle(schedule, 'eps', 0.0, 0.5))
    for smp, calls in [(DDPMSampler(schedule), 100), (DDIMSampler(schedule, steps=7), 7), (DDIMSampler(schedule, steps=7, eta=0.5), 7),
                       (DPMSolverSampler(schedule, steps=9), 9), (make_sampler('dpm++', schedule, steps=13), 13)]:
        counter.reset()
        sample(counter, smp, 3, 4, generator=torch.Generator().manual_seed(0))
        assert (counter.calls, counter.images) == (calls, 3 * calls), smp
    counter.reset()
    DDIMSampler(schedule, steps=7).invert(counter, torch.zeros(2, 3, 4, 4))
    assert counter.calls == 7
    counter.reset()
    sample(counter, ForgetfulDDIM(schedule, steps=7), 3, 4, generator=torch.Generator().manual_seed(0))
    assert counter.calls == 100                                                        # the control: the count catches it
    seen = []
    counted = CountingModel(lambda x_t, t, cond=None: seen.append(cond) or torch.zeros_like(x_t))
    sample(counted, DDIMSampler(schedule, steps=3), 1, 4, cond={'a': 1})
    assert counted.calls == 3 and seen == [{'a': 1}] * 3                               # the condition passes through


def test_oracles_are_minus_sigma_times_the_score():
    """Tweedie: ε̂ = −√(1−ᾱ) ∇log p_t and E[x_0|x_t] = (x_t + (1−ᾱ) ∇log p_t)/√ᾱ, with the score in closed form (Gaussian
    data) or by autograd of log p_t (a finite training set); the wrong scaling (1−ᾱ for √(1−ᾱ)) is the control."""
    schedule, mu, sd = NoiseSchedule('linear', T), 0.2, 0.5
    train = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    gauss, mix, mix_x0 = (GaussianOracle(schedule, 'eps', mu, sd), DatasetOracle(schedule, train, 'eps'),
                          DatasetOracle(schedule, train, 'x0'))
    for t in (10, 200, 900):
        ab, tt = schedule.f64.alphas_cumprod[t].item(), torch.full((32,), t)
        gen = torch.Generator().manual_seed(t)
        x = math.sqrt(ab) * train[torch.randint(0, 5, (32,), generator=gen)] + math.sqrt(1 - ab) * torch.randn(32, 3, 4, 4, generator=gen)
        score = -(x.double() - math.sqrt(ab) * mu) / (ab * sd ** 2 + 1 - ab)            # N(√ᾱ μ, ᾱ sd² + 1 − ᾱ)
        assert torch.allclose(gauss(x, tt).double(), -math.sqrt(1 - ab) * score, rtol=1e-4, atol=1e-5)
        xx = x.double().requires_grad_(True)
        d2 = (xx.flatten(1)[:, None] - math.sqrt(ab) * train.double().flatten(1)[None]).pow(2).sum(-1)
        torch.logsumexp(-d2 / (2 * (1 - ab)), 1).sum().backward()
        score = xx.grad
        assert torch.allclose(mix(x, tt).double(), -math.sqrt(1 - ab) * score, rtol=1e-3, atol=1e-4)
        assert torch.allclose(mix_x0(x, tt).double(), (x.double() + (1 - ab) * score) / math.sqrt(ab), rtol=1e-3, atol=1e-3)
        if t == 10: assert not torch.allclose(mix(x, tt).double(), -(1 - ab) * score, rtol=0.1, atol=0.01)


def test_dataset_oracle_memorises():
    schedule = NoiseSchedule('linear', T)
    train = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    oracle = DatasetOracle(schedule, train, 'x0')
    x = sample(oracle, DDIMSampler(schedule, 'x0', steps=20), 5, 8, generator=torch.Generator().manual_seed(1))
    assert torch.cdist(x.flatten(1), train.flatten(1)).min(1).values.max() < 1e-3
    x0 = oracle(train * 0.999, torch.zeros(6, dtype=torch.long))                      # t = 0: the nearest image
    assert torch.allclose(x0, train, atol=1e-4)


# ---------------------------------------------------------------- reproducibility, trajectories, GIF, slider

def test_seed_reproduces_samples():
    schedule = NoiseSchedule('linear', T)
    oracle = GaussianOracle(schedule, 'eps', 0.0, 0.5)
    for smp in (DDPMSampler(schedule), DDIMSampler(schedule, steps=20, eta=0.5)):
        a, b, c = (sample(oracle, smp, 2, 8, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8))
        assert torch.equal(a, b) and not torch.allclose(a, c)


def test_trajectory_and_stop_noise():
    schedule = NoiseSchedule('linear', 100)
    oracle = GaussianOracle(schedule, 'eps', 0.0, 0.5)
    recorder = TrajectoryRecorder(every=7)
    x = sample(oracle, DDPMSampler(schedule), 3, 8, generator=torch.Generator().manual_seed(0), callback=recorder)
    traj = recorder.trajectory(x)
    assert isinstance(traj, Trajectory) and traj.timesteps[:3] == [99, 92, 85] and traj.timesteps[-1] == -1
    assert traj.x_t.shape == (len(traj), 3, 3, 8, 8) == traj.x0_hat.shape and traj.x_t.dtype == torch.float16
    assert torch.allclose(traj.x_t[-1].float(), x, atol=1e-2)
    quiet = [sample(oracle, DDPMSampler(schedule), 3, 8, generator=torch.Generator().manual_seed(s),
                    x_T=torch.ones(3, 3, 8, 8), stop_noise_after=0) for s in (0, 1)]
    assert torch.equal(*quiet)                                                         # no noise: no randomness
    late = [sample(oracle, DDPMSampler(schedule), 3, 8, generator=torch.Generator().manual_seed(s),
                   x_T=torch.ones(3, 3, 8, 8), stop_noise_after=50) for s in (0, 1)]
    assert not torch.allclose(*late)


def test_gif_and_slider(tmp_path):
    schedule = NoiseSchedule('linear', 200)
    oracle = GaussianOracle(schedule, 'eps', 0.0, 0.5)
    recorder = TrajectoryRecorder(every=2)
    x = sample(oracle, DDPMSampler(schedule), 4, 16, generator=torch.Generator().manual_seed(0), callback=recorder)
    traj = recorder.trajectory(x)
    idx = frame_indices(len(traj), 20)
    assert idx[0] == 0 and idx[-1] == len(traj) - 1 and np.diff(idx)[-3:].mean() < np.diff(idx)[:3].mean()
    pics, labels, ts = trajectory_frames(traj, 20, nrow=2)
    assert pics.dtype == torch.uint8 and pics.shape[:3] == (len(idx), 2, 3) and labels[-1] == 'result'
    path = save_denoising_gif(traj, tmp_path / 'd.gif', frames=20, nrow=2, scale=1)
    expected = len({round((len(traj) - 1) * (1 - (1 - j / 19) ** 2)) for j in range(20)})   # i = (K−1)(1 − (1−u)²), repeats merged
    assert len(idx) == expected
    with Image.open(path) as gif:
        assert gif.n_frames == expected
        gif.seek(expected - 1); assert gif.info.get('duration') == 1500   # the result, held
    box = reverse_slider(traj, nrow=2, frames=20)
    assert list(box.slider.options) == ts and len(box.images) == 2


# ---------------------------------------------------------------- runs and bad input

def test_sample_run_from_a_run_folder(tmp_path):
    from face_diffusion.data import synthetic_faces
    from face_diffusion.training import Trainer, TrainConfig, load_run
    from face_diffusion.unet import UNetConfig
    images, _ = synthetic_faces(8, size=32, seed=0)
    tc = TrainConfig(steps=1, batch_size=4, warmup_steps=0, log_every=1, save_every=1, sample_every=0, sample_n=1,
                     sample_steps=1, T=100)
    Trainer(UNetConfig.preset('tiny'), tc, images, tmp_path / 'run', device='cpu', progress=False).fit()
    run = load_run(tmp_path / 'run')
    a = sample_run(run, 2, sampler='ddim', steps=5, seed=3)
    assert a.shape == (2, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, sample_run(run, 2, sampler='ddim', steps=5, seed=3))
    recorder = TrajectoryRecorder(every=10)
    b = sample_run(run, 1, sampler='ddpm', seed=0, callback=recorder)
    traj = recorder.trajectory(b)
    assert len(traj) == 11 and b.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match='steps'): sample_run(run, 1, sampler='ddim', steps=101)
    with pytest.raises(ValueError, match='ddim'): sample_run(run, 1, sampler='ddpm', steps=10)


@pytest.mark.parametrize('make', [
    lambda s: DDPMSampler(s, 'noise'), lambda s: DDPMSampler(s, variance='large'),
    lambda s: DDIMSampler(s, steps=0), lambda s: DDIMSampler(s, steps=T + 1), lambda s: DDIMSampler(s, eta=1.5),
    lambda s: DDIMSampler(s, spacing='log'), lambda s: make_sampler('euler', s),
    lambda s: DDIMSampler(s, steps=10).step(torch.zeros(1, 3, 4, 4), 5, torch.zeros(1, 3, 4, 4)),
    lambda s: DDPMSampler(s).step(torch.zeros(1, 3, 4, 4), T, torch.zeros(1, 3, 4, 4)),
    lambda s: sample(GaussianOracle(s), DDPMSampler(s), 1, 4, stop_noise_after=T + 1),
    lambda s: sample(GaussianOracle(s), DDPMSampler(s), 1, 4, x_T=torch.zeros(1, 3, 5, 5)),
    lambda s: sample(GaussianOracle(s), DDPMSampler(s), 0, 4),
    lambda s: TrajectoryRecorder(every=0),
])
def test_bad_input_is_one_line_value_error(make):
    with pytest.raises(ValueError) as e: make(NoiseSchedule('linear', T))
    assert '\n' not in str(e.value)


def test_slerp_keeps_the_norm():
    a, b = torch.randn(2, 1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    assert abs(slerp(a, b, 0.5).norm() / a.norm() - 1) < 0.05


def test_slerp_turns_at_a_constant_rate():
    "∠(a, x_w) = wθ and ∠(x_w, b) = (1 − w)θ: a normalised straight line or a hard switch fails this (chapter 06 shows both)."
    a, b = torch.randn(2, 1, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    angle = lambda u, v: torch.arccos(((u.flatten() @ v.flatten()) / (u.norm() * v.norm())).clamp(-1, 1)).item()
    theta = angle(a, b)
    for w in (0.1, 0.25, 0.5, 0.75, 0.9):
        x = slerp(a, b, w)
        assert abs(angle(a, x) - w * theta) < 0.01 and abs(angle(x, b) - (1 - w) * theta) < 0.01, w


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_cuda_sampling_matches_cpu_seed():
    schedule = NoiseSchedule('linear', T)
    oracle = GaussianOracle(schedule, 'eps', 0.0, 0.5)
    a = sample(oracle, DDIMSampler(schedule, steps=20, eta=0.5), 2, 8, generator=torch.Generator().manual_seed(1))
    b = sample(oracle, DDIMSampler(schedule, steps=20, eta=0.5), 2, 8, generator=torch.Generator().manual_seed(1), device='cuda')
    assert b.device.type == 'cuda' and torch.allclose(a, b.cpu(), atol=1e-4)


# ---------------------------------------------------------------- the sampler interface and the one loop

def test_step_output_unpacks_as_a_pair():
    schedule = NoiseSchedule('linear', 100)
    x_t, out = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for smp in (DDPMSampler(schedule), DDIMSampler(schedule, steps=10), DPMSolverSampler(schedule, steps=10)):
        t = int(smp.timesteps[0])
        z = torch.randn(x_t.shape)
        step = smp.step(out, t, x_t, noise=z)
        smp.reset()
        x_next, x0_hat = smp.step(out, t, x_t, noise=z)
        assert isinstance(step, StepOutput) and isinstance(smp, Sampler)
        assert torch.equal(x_next, step.prev_sample) and torch.equal(x0_hat, step.pred_original_sample)


def test_ddim_reads_the_schedules_float64_alphas():
    "No second copy of ᾱ: the sampler's numbers are the schedule's float64 ones, exactly."
    schedule = NoiseSchedule('cosine', T)
    for smp in (DDIMSampler(schedule, steps=10), DPMSolverSampler(schedule, steps=10)):
        assert not hasattr(smp, 'alphas_cumprod')
        for t in smp.timesteps.tolist():
            assert smp.alpha_bar(t) == schedule.f64.alphas_cumprod[t].item()
    c = DDIMSampler(schedule, steps=10, spacing='trailing').coefficients(999)
    assert c['alpha_bar'] == schedule.f64.alphas_cumprod[999].item() and c['alpha_bar_prev'] == schedule.f64.alphas_cumprod[899].item()


def test_dpm_solver_state_is_explicit():
    "DPM-Solver++ has no η, is not a DDIM subclass, and keeps only `previous`, which reset() forgets."
    schedule = NoiseSchedule('cosine', T)
    smp = DPMSolverSampler(schedule, 'eps', steps=5)
    assert not hasattr(smp, 'eta') and not isinstance(smp, DDIMSampler) and smp.previous is None
    x, out = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    ts = smp.timesteps.tolist()
    smp.step(out, ts[0], x)
    assert smp.previous is not None and smp.previous[1] == smp.alpha_sigma_lambda(ts[0])[2]
    smp.reset()
    assert smp.previous is None
    first_order = smp.step(out, ts[1], x).prev_sample                              # no memory: a DDIM (η = 0) step
    ddim = DDIMSampler(schedule, 'eps', steps=5, spacing='trailing').step(out, ts[1], x).prev_sample
    assert torch.allclose(first_order, ddim, atol=1e-5)


class CountingSampler(DDIMSampler):
    "DDIM that records when the loop calls reset() and step()."
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = []

    def reset(self): self.calls.append('reset')

    def step(self, *a, **kw):
        self.calls.append('step')
        return super().step(*a, **kw)


def test_the_loop_resets_the_sampler_before_the_first_step():
    schedule = NoiseSchedule('linear', 100)
    smp = CountingSampler(schedule, steps=4)
    for _ in range(2): sample(GaussianOracle(schedule), smp, 1, 4, generator=torch.Generator().manual_seed(0))
    assert smp.calls == ['reset', 'step', 'step', 'step', 'step'] * 2


def test_the_loop_passes_the_condition_and_calls_back():
    schedule = NoiseSchedule('linear', 100)
    oracle = GaussianOracle(schedule, 'eps', 0.0, 0.5)
    seen = []

    class Conditional(torch.nn.Module):
        def forward(self, x_t, t, cond=None):
            seen.append(cond)
            return oracle(x_t, t, cond=cond)

    cond = {'attributes': torch.ones(2, 4)}
    steps = []
    smp = DDIMSampler(schedule, steps=5)
    with_cond = sample(Conditional(), smp, 2, 4, generator=torch.Generator().manual_seed(0), cond=cond,
                       callback=lambda i, t, x_t, x0_hat: steps.append((i, t, x_t.shape, x0_hat.shape)))
    assert all(c is cond for c in seen) and len(seen) == 5
    assert [s[:2] for s in steps] == list(enumerate(smp.timesteps.tolist())) and steps[0][2] == steps[0][3] == (2, 3, 4, 4)
    unconditional = sample(lambda x_t, t: oracle(x_t, t), smp, 2, 4, generator=torch.Generator().manual_seed(0))   # model(x, t)
    assert torch.equal(with_cond, unconditional)


def test_nan_images_warn_once():
    schedule = NoiseSchedule('linear', 20)
    half_nan = lambda x_t, t: torch.cat([torch.full_like(x_t[:1], float('nan')), torch.zeros_like(x_t[1:])])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        sample(half_nan, DDPMSampler(schedule), 3, 4, generator=torch.Generator().manual_seed(0))
        sample(GaussianOracle(schedule), DDPMSampler(schedule), 3, 4, generator=torch.Generator().manual_seed(0))
    assert len(caught) == 1 and '\n' not in str(caught[0].message)
    assert '1 of 3 images from DDPMSampler' in str(caught[0].message) and 'damaged' in str(caught[0].message)


def test_sample_run_defaults_to_dpm_solver_and_reads_channels():
    schedule = NoiseSchedule('linear', 100)
    run = SimpleNamespace(model=GaussianOracle(schedule, 'v', 0.1, 0.5), schedule=schedule, objective='v',
                          config={'image_size': 8, 'unet': {'in_channels': 3}})
    default = sample_run(run, 2, seed=1, steps=10)
    assert torch.equal(default, sample_run(run, 2, 'dpm++', seed=1, steps=10))
    assert not torch.equal(default, sample_run(run, 2, 'ddim', seed=1, steps=10))
    run.channels = 1                                                                 # a run that knows its channels
    assert sample_run(run, 2, seed=1, steps=10).shape == (2, 1, 8, 8)
    recorder = TrajectoryRecorder(every=3)
    x = sample_run(run, 2, sampler='ddpm', seed=1, callback=recorder)
    assert recorder.trajectory(x).timesteps == list(range(99, -1, -3)) + [-1]


def test_first_faces():
    traj = Trajectory([5, -1], torch.zeros(2, 40, 3, 4, 4), torch.ones(2, 40, 3, 4, 4))
    few = first_faces(traj)
    assert GIF_FACES == 16 and few.x_t.shape == few.x0_hat.shape == (2, 16, 3, 4, 4) and few.timesteps == [5, -1]
    assert first_faces(traj, 3).x_t.shape[1] == 3


BLOCK_DRAWING = '''
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('ipywidgets', 'matplotlib'): raise ImportError(f'{name} is blocked for this test')
sys.meta_path.insert(0, Blocked())
import face_diffusion.forward, face_diffusion.sampling, face_diffusion.widgets
assert not any(m.split('.')[0] in ('ipywidgets', 'matplotlib') for m in sys.modules)
print('imported')
'''


def test_imports_without_ipywidgets_or_matplotlib():
    "The sampling code imports (so the command line samples) without the drawing libraries."
    out = subprocess.run([sys.executable, '-c', BLOCK_DRAWING], capture_output=True, text=True)
    assert out.returncode == 0 and 'imported' in out.stdout, out.stderr[-2000:]


def test_gaussian_oracle_is_the_best_linear_guess():
    "Its MSE is Var(x_0|x_t) in closed form, and the least-squares scale of its correction is 1; a gain 8% off fails."
    schedule = NoiseSchedule('linear', T)
    mu, sd, t, n = 0.2, 0.5, 400, 4096
    g = torch.Generator().manual_seed(0)
    x0 = mu + sd * torch.randn(n, 3, 8, 8, generator=g)
    ab = schedule.f64.alphas_cumprod[t].item()
    x_t = ab ** 0.5 * x0 + (1 - ab) ** 0.5 * torch.randn(x0.shape, generator=g)
    oracle = GaussianOracle(schedule, 'x0', mu, sd)
    def scale(denoiser):
        c = (denoiser(x_t, torch.full((n,), t)) - mu).double().flatten()
        r = (x0 - mu).double().flatten() - c
        return (1 + c @ r / (c @ c)).item(), ((c * r).pow(2).sum().sqrt() / (c @ c)).item(), r.pow(2).mean().item()
    k, se, mse = scale(oracle)
    assert abs(k - 1) < 5 * se and mse == pytest.approx(sd ** 2 * (1 - ab) / (ab * sd ** 2 + 1 - ab), rel=0.01)
    k_bad, se_bad, _ = scale(lambda x, tt: mu + 1.08 * (oracle(x, tt) - mu))
    assert abs(k_bad - 1) > 5 * se_bad
