"""The forward process: schedules against the papers' formulas (evaluated here in plain Python), the closed form
q(x_t | x_0) against the step-by-step chain (by sampling, within computed sampling error, and exactly through the chain's
recursion; both failing for a wrong ᾱ), the map between variance preserving and variance exploding, the posterior
(exactly by Bayes' rule, by its marginal, and against the joint law of (x_0, x_{t−1}, x_t), each failing for wrong
posteriors), the ε / x_0 / v conversions, the DDIM update, the Gaussian degradation, the diffusers config, where chapters
save README figures, and one-line errors for bad input."""
import math
import numpy as np
import pytest
import torch
from face_diffusion.forward import (NoiseSchedule, OBJECTIVES, SCHEDULES, check_closed_form, check_posterior, cosine_betas, extract,
                                    quadratic_betas, sigmoid_betas,
                                    linear_betas, model_target, q_posterior, q_sample, q_step, split_prediction, velocity,
                                    ddim_update, ddim_weights, Degradation, GaussianNoise, scheduler_config, PREDICTION_TYPES)

KINDS = ['linear', 'cosine', 'quadratic', 'sigmoid']


# --- schedules against the papers, computed independently -------------------------------------------------------

def test_linear_alpha_bar_T_matches_ddpm_paper():
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]      # Ho et al. 2020: β_1 = 1e-4 … β_T = 0.02
    alpha_bar_T = math.prod(1 - b for b in betas)                      # ᾱ_T = ∏ (1 − β_t)
    s = NoiseSchedule('linear', 1000)
    assert math.isclose(s.alphas_cumprod[-1].item(), alpha_bar_T, rel_tol=1e-4)
    assert math.isclose(alpha_bar_T, 4.0358e-5, rel_tol=1e-3)          # the well-known value, as a sanity check


def test_linear_schedule_rescaled_for_other_T():
    for T in [100, 250, 4000]:
        b = linear_betas(T)
        assert b.dtype == torch.float64 and len(b) == T
        assert math.isclose(b[0].item(), 1e-4 * 1000 / T) and math.isclose(b[-1].item(), 0.02 * 1000 / T)
        ab_T = math.prod(1 - x for x in b.tolist())
        assert 1e-6 < ab_T < 1e-3                                      # ends about where T = 1000 ends


def test_cosine_matches_improved_ddpm_formula():
    T, s = 1000, 0.008
    t = np.arange(T + 1) / T
    f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2                     # f(t) = cos²((t/T + s)/(1 + s) · π/2)
    alpha_bar = f / f[0]                                               # ᾱ_t = f(t)/f(0)
    betas = np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999)      # β_t = min(1 − ᾱ_t/ᾱ_{t−1}, 0.999)
    np.testing.assert_allclose(cosine_betas(T).numpy(), betas, rtol=1e-10, atol=1e-15)
    sched = NoiseSchedule('cosine', T)
    np.testing.assert_allclose(sched.alphas_cumprod[:-1].double().numpy(), alpha_bar[1:-1], rtol=1e-4, atol=1e-8)
    assert sched.betas[-1].item() == pytest.approx(0.999)              # the clipped last step


def quadratic_gap(betas, T=1000):
    "Largest relative gap from β_t = (√β_1 + (√β_T − √β_1)(t−1)/(T−1))², √β on a straight line (plain Python)."
    root = lambda t: math.sqrt(1e-4) + (math.sqrt(0.02) - math.sqrt(1e-4)) * (t - 1) / (T - 1)
    return max(abs(betas[t - 1].item() / root(t) ** 2 - 1) for t in [1, 2, 10, 100, 500, 900, 999, 1000])


def sigmoid_gap(betas, T=1000, a=-3.0, b=3.0, tau=1.0):
    "Largest relative gap of ᾱ from (σ(b/τ) − σ(u_t))/(σ(b/τ) − σ(a/τ)), u_t = (a + (b − a) t/T)/τ (plain Python)."
    sig = lambda u: 1 / (1 + math.exp(-u))
    ab_paper = lambda t: (sig(b / tau) - sig((a + (b - a) * t / T) / tau)) / (sig(b / tau) - sig(a / tau))
    ab = torch.cumprod(1 - betas, 0)
    return max(abs(ab[t - 1].item() / ab_paper(t) - 1) for t in [1, 10, 100, 500, 900, 990])


def test_quadratic_and_sigmoid_match_their_formulas():
    assert quadratic_gap(quadratic_betas(1000)) < 1e-12
    assert sigmoid_gap(sigmoid_betas(1000)) < 1e-9
    assert NoiseSchedule('sigmoid', 1000).f64.alphas_cumprod[499].item() == pytest.approx(0.5, rel=1e-12)   # σ(0) halfway
    # wrong schedules fail: a "quadratic" that is linear, a sigmoid without the (b − a) stretch of t/T
    assert quadratic_gap(linear_betas(1000)) > 0.1
    steps = torch.arange(1001, dtype=torch.float64) / 1000
    v0, v1 = torch.sigmoid(torch.tensor(-3.0, dtype=torch.float64)), torch.sigmoid(torch.tensor(3.0, dtype=torch.float64))
    ab = (v1 - torch.sigmoid(steps - 3.0)) / (v1 - v0)
    assert sigmoid_gap((1 - ab[1:] / ab[:-1]).clamp(0, 0.999)) > 0.1


@pytest.mark.parametrize('kind', KINDS)
def test_schedule_derived_quantities(kind):
    s = NoiseSchedule(kind, 200)
    b = s.betas.double()
    ab = torch.cumprod(1 - b, 0)
    for name in NoiseSchedule.names:
        v = getattr(s, name)
        assert v.dtype == torch.float32 and v.shape == (200,) and torch.isfinite(v).all(), name
    assert ((s.betas > 0) & (s.betas < 1)).all() and (s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all()
    torch.testing.assert_close(s.alphas_cumprod.double(), ab, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    assert s.alphas_cumprod_prev[0] == 1
    torch.testing.assert_close(s.snr.double(), ab / (1 - ab), rtol=1e-4, atol=0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    torch.testing.assert_close(s.posterior_variance.double(), b * (1 - ab_prev) / (1 - ab), rtol=1e-4, atol=1e-12)


def test_schedule_config_round_trip_and_device():
    s = NoiseSchedule('sigmoid', 300)
    s2 = NoiseSchedule.from_config(s.config())
    assert s2.config() == {'kind': 'sigmoid', 'T': 300} and torch.equal(s2.betas, s.betas)
    s3 = s.to('cpu')
    assert s3.T == 300 and s3.kind == 'sigmoid' and torch.equal(s3.alphas_cumprod, s.alphas_cumprod)


# --- the closed form against the chain ------------------------------------------------------------------------------

def chain_and_jump(schedule, x0, ts, n, seed):
    "n samples of x_t by the chain (q_step) and by the jump (q_sample) at each t in ts, as float64 numpy arrays."
    g = torch.Generator().manual_seed(seed)
    x0 = torch.tensor(x0, dtype=torch.float64).expand(n, -1)
    x, out = x0.clone(), {}
    for t in range(max(ts) + 1):
        x = q_step(schedule, x, t, generator=g)
        if t in ts: out[t] = (x.numpy().copy(), q_sample(schedule, x0, t, generator=g).numpy())
    return out


def worst_z(samples):
    "Largest |difference| / standard error over means and variances (Gaussian samples)."
    worst = 0.0
    for a, b in samples.values():
        n = len(a)
        va, vb = a.var(0, ddof=1), b.var(0, ddof=1)
        se_mean = np.sqrt((va + vb) / n)                               # SE of a difference of two means
        se_var = np.sqrt(2 * (va ** 2 + vb ** 2) / (n - 1))            # SE of a difference of two sample variances
        for diff, se in [(a.mean(0) - b.mean(0), se_mean), (va - vb, se_var)]:
            z = np.where(se > 0, np.abs(diff) / np.where(se > 0, se, 1), np.where(diff == 0, 0, np.inf))
            worst = max(worst, float(z.max()))
    return worst


def with_alphas_cumprod(s, ab):
    wrong = s.to('cpu')
    wrong.alphas_cumprod, wrong.sqrt_alphas_cumprod, wrong.sqrt_one_minus_alphas_cumprod = ab, ab.sqrt(), (1 - ab).sqrt()
    return wrong


PIXELS, TS = [-1.0, -0.2, 0.5, 1.0], [0, 1, 9, 99, 499, 999]


@pytest.mark.parametrize('kind', KINDS)
def test_closed_form_agrees_with_chain(kind):
    s = NoiseSchedule(kind, 1000)
    assert worst_z(chain_and_jump(s, PIXELS, TS, n=4000, seed=KINDS.index(kind))) < 5
    assert check_closed_form(s, PIXELS, TS, n=4000, generator=torch.Generator().manual_seed(10))['ok']


@pytest.mark.parametrize('wrong', ['off_by_one', 'alpha_not_alpha_bar', 'typo_power'])
def test_wrong_alpha_bar_is_caught(wrong):
    s = NoiseSchedule('linear', 1000)
    ab = {'off_by_one': s.alphas_cumprod_prev,                          # ᾱ_{t−1}: ∏ without the last α
          'alpha_not_alpha_bar': s.alphas,                              # α_t: no product at all
          'typo_power': s.alphas ** torch.arange(1, 1001)}[wrong]       # ∏_{i≤t} α_t read literally
    bad = with_alphas_cumprod(s, ab)
    assert worst_z(chain_and_jump(bad, PIXELS, TS, n=4000, seed=0)) > 5
    assert not check_closed_form(bad, PIXELS, TS, n=4000, generator=torch.Generator().manual_seed(10))['ok']


def test_q_sample_batch_timesteps_and_generator():
    s = NoiseSchedule('cosine', 1000)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    t = torch.tensor([0, 10, 500, 999])
    a = q_sample(s, x0, t, generator=torch.Generator().manual_seed(3))
    b = q_sample(s, x0, t, generator=torch.Generator().manual_seed(3))
    assert a.shape == x0.shape and torch.equal(a, b)                   # seeded: reproducible
    eps = torch.randn(x0.shape)
    expect = s.sqrt_alphas_cumprod[t].view(4, 1, 1, 1) * x0 + s.sqrt_one_minus_alphas_cumprod[t].view(4, 1, 1, 1) * eps
    torch.testing.assert_close(q_sample(s, x0, t, noise=eps), expect)
    assert extract(s.betas, t, x0.shape).shape == (4, 1, 1, 1) and extract(s.betas, 5, x0.shape).shape == (1, 1, 1, 1)


# --- the closed form's coefficients against the chain's recursion, exactly ----------------------------------------

def chain_gap(s):
    "Largest gap between √ᾱ_t, 1 − ᾱ_t and the signal factor a_t = √α_t a_{t−1} and noise variance n_t = α_t n_{t−1} + β_t."
    a, b = s.alphas.double().tolist(), s.betas.double().tolist()
    signal, noise, worst = 1.0, 0.0, 0.0
    for t in range(s.T):
        signal, noise = math.sqrt(a[t]) * signal, a[t] * noise + b[t]
        worst = max(worst, abs(signal - s.sqrt_alphas_cumprod[t].item()), abs(noise - s.sqrt_one_minus_alphas_cumprod[t].item() ** 2))
    return worst


@pytest.mark.parametrize('kind', KINDS)
def test_closed_form_coefficients_follow_the_chain(kind):
    for T in [50, 1000]:
        assert chain_gap(NoiseSchedule(kind, T)) < 1e-5


@pytest.mark.parametrize('wrong', ['off_by_one', 'alpha_not_alpha_bar', 'typo_power'])
def test_wrong_alpha_bar_breaks_the_chain_recursion(wrong):
    s = NoiseSchedule('linear', 1000)
    ab = {'off_by_one': s.alphas_cumprod_prev, 'alpha_not_alpha_bar': s.alphas,
          'typo_power': s.alphas ** torch.arange(1, 1001)}[wrong]
    bad = with_alphas_cumprod(s, ab)
    # the old check, (√ᾱ)² + (√(1−ᾱ))² = 1, holds for any ᾱ in [0, 1]: it passes every wrong schedule ...
    assert torch.allclose(bad.sqrt_alphas_cumprod ** 2 + bad.sqrt_one_minus_alphas_cumprod ** 2, torch.ones(1000))
    assert chain_gap(bad) > 1e-4                                       # ... the recursion does not


def test_variance_preserving_is_variance_exploding_rescaled():
    s, g, n = NoiseSchedule('cosine', 1000), torch.Generator().manual_seed(14), 20_000
    x0, eps = torch.randn(2, n, generator=g, dtype=torch.float64)     # unit-variance data, one ε for both forms
    for t in [0, 10, 500, 990]:
        ab = s.f64.alphas_cumprod[t].item()
        sigma = math.sqrt((1 - ab) / ab)                               # σ^VE_t = √((1−ᾱ_t)/ᾱ_t)
        vp, ve = q_sample(s, x0, t, noise=eps), x0 + sigma * eps       # VP and VE
        torch.testing.assert_close(vp, ve / math.sqrt(1 + sigma ** 2), rtol=0, atol=1e-6)   # x_t = y/√(1+σ²)
        assert t == 0 or not torch.allclose(vp, (x0 + math.sqrt(1 - ab) * eps) / math.sqrt(2 - ab), atol=1e-6)  # σ = √(1−ᾱ): wrong
        assert math.isclose(sigma, s.f64.sqrt_recipm1_alphas_cumprod[t].item(), rel_tol=1e-12)
        assert abs(vp.var().item() - 1) < 5 * math.sqrt(2 / n)        # VP keeps unit variance
        assert abs(ve.var().item() / (1 + sigma ** 2) - 1) < 5 * math.sqrt(2 / n)   # VE: 1 + σ²


# --- the posterior ----------------------------------------------------------------------------------------------------

def ignores_x_t(s, x0, x_t, t):
    "Wrong: q(x_{t−1} | x_0), which forgets x_t (it has exactly the right marginal)."
    ab_prev = extract(s.alphas_cumprod_prev, t, x_t.shape)
    return ab_prev.sqrt() * x0 + 0 * x_t, (1 - ab_prev).expand_as(x_t), None

def swapped(s, x0, x_t, t):
    "Wrong: c_1 and c_2 exchanged."
    return q_posterior(s, x_t, x0, t)

def variance_beta(s, x0, x_t, t):
    "Wrong: the right mean with the forward step's variance β_t."
    return q_posterior(s, x0, x_t, t)[0], extract(s.betas, t, x_t.shape), None

WRONG_POSTERIORS = {'ignores_x_t': ignores_x_t, 'swapped': swapped, 'variance_beta': variance_beta}
POST_TS = [1, 10, 300, 999]


def log_normal(x, mean, var): return -0.5 * (torch.log(2 * math.pi * var) + (x - mean) ** 2 / var)


def bayes_gap(s, posterior):
    "max |log q(x_t|x_{t−1}) + log q(x_{t−1}|x_0) − log posterior(x_{t−1}) − log q(x_t|x_0)| over x_{t−1}, several t."
    f, worst = s.f64, 0.0
    for t in POST_TS:
        for x0v, xtv in [(0.7, -0.4), (-1.0, 1.5)]:
            x0, xt = torch.tensor([x0v], dtype=torch.float64), torch.tensor([xtv], dtype=torch.float64)
            mean, var = (v.double() for v in posterior(s, x0, xt, t)[:2])
            xs = mean + var.sqrt() * torch.linspace(-4, 4, 41, dtype=torch.float64)
            lhs = log_normal(xt, f.alphas[t].sqrt() * xs, f.betas[t]) + log_normal(xs, f.alphas_cumprod_prev[t].sqrt() * x0, 1 - f.alphas_cumprod_prev[t])
            rhs = log_normal(xs, mean, var) + log_normal(xt, f.alphas_cumprod[t].sqrt() * x0, 1 - f.alphas_cumprod[t])
            worst = max(worst, (lhs - rhs).abs().max().item())
    return worst


def marginal_worst_z(s, posterior, n=50_000, x0v=-0.6, seed=4):
    "Draw x_t ~ q(x_t|x_0), x_{t−1} from the posterior; worst z of its mean and variance against q(x_{t−1}|x_0)."
    g, worst = torch.Generator().manual_seed(seed), 0.0
    for t in POST_TS:
        x0 = torch.full((n,), x0v, dtype=torch.float64)
        x_t = q_sample(s, x0, t, generator=g)
        mean, var = posterior(s, x0, x_t, t)[:2]
        x_prev = mean + var.sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
        ab = s.alphas_cumprod[t - 1].item()                            # x_{t−1} ~ N(√ᾱ_{t−1} x_0, 1 − ᾱ_{t−1})
        worst = max(worst, abs(x_prev.mean().item() - math.sqrt(ab) * x0v) / math.sqrt((1 - ab) / n),
                    abs(x_prev.var().item() - (1 - ab)) / ((1 - ab) * math.sqrt(2 / (n - 1))))
    return worst


@pytest.mark.parametrize('kind', KINDS)
def test_posterior_satisfies_bayes_rule_exactly(kind):
    assert bayes_gap(NoiseSchedule(kind, 1000), q_posterior) < 1e-3


@pytest.mark.parametrize('kind', KINDS)
def test_posterior_reproduces_the_joint_law(kind):
    report = check_posterior(NoiseSchedule(kind, 1000), POST_TS, n=20_000, generator=torch.Generator().manual_seed(15))
    assert report['ok'], report['rows']
    s = NoiseSchedule(kind, 1000)                                      # index 0: the step back to x_0 is certain
    mean, var, _ = q_posterior(s, torch.tensor([0.3]), torch.tensor([2.0]), 0)
    assert math.isclose(mean.item(), 0.3, rel_tol=1e-6) and var.item() == 0


@pytest.mark.parametrize('wrong', list(WRONG_POSTERIORS))
def test_wrong_posteriors_are_caught(wrong):
    s, post = NoiseSchedule('linear', 1000), WRONG_POSTERIORS[wrong]
    assert bayes_gap(s, post) > 1e-2
    assert not check_posterior(s, POST_TS, n=20_000, posterior=post, generator=torch.Generator().manual_seed(15))['ok']
    if wrong == 'ignores_x_t':                                         # why the joint test exists: the marginal one passes it
        assert marginal_worst_z(s, post) < 5


def test_check_posterior_rejects_index_zero():
    with pytest.raises(ValueError, match='1 … 99'): check_posterior(NoiseSchedule('linear', 100), [0], n=10)


def test_posterior_step_has_the_right_marginal():
    s, n, g = NoiseSchedule('linear', 1000), 50_000, torch.Generator().manual_seed(4)
    for t in [1, 50, 400, 999]:
        x0 = torch.full((n,), -0.6, dtype=torch.float64)
        x_t = q_sample(s, x0, t, generator=g)
        mean, var, log_var = q_posterior(s, x0, x_t, t)
        x_prev = mean + var.sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
        ab = s.alphas_cumprod[t - 1].item()                            # x_{t−1} ~ N(√ᾱ_{t−1} x_0, 1 − ᾱ_{t−1})
        assert abs(x_prev.mean().item() - math.sqrt(ab) * -0.6) < 5 * math.sqrt((1 - ab) / n)
        assert abs(x_prev.var().item() - (1 - ab)) < 5 * (1 - ab) * math.sqrt(2 / (n - 1))
        torch.testing.assert_close(log_var.exp(), var)


@pytest.mark.parametrize('objective', OBJECTIVES)
def test_objectives_round_trip(objective):
    s, g = NoiseSchedule('linear', 1000), torch.Generator().manual_seed(5)
    x0 = torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 100, 500, 900, 999])
    x_t = q_sample(s, x0, t, noise=eps)
    x0_hat, eps_hat = split_prediction(s, objective, x_t, t, model_target(s, objective, x0, eps, t))
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-4)   # float32 coefficients × 1/√ᾱ_T ≈ 157
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-5)
    v = velocity(s, x0, eps, t)
    ab = s.alphas_cumprod[t].double().view(-1, 1, 1, 1)
    torch.testing.assert_close(v, ab.sqrt() * eps - (1 - ab).sqrt() * x0, rtol=0, atol=1e-6)


def velocity_ends_gap(v_fn, kind):
    "Largest |v − ε| at index 0 and |v + x_0| at index T − 1: v turns from ε into −x_0 as t goes from 0 to T."
    s, g = NoiseSchedule(kind, 1000), torch.Generator().manual_seed(8)
    x0 = torch.rand(4000, generator=g) * 2 - 1
    eps = torch.randn(4000, generator=g).clamp(-4, 4)
    return max((v_fn(s, x0, eps, 0) - eps).abs().max().item(), (v_fn(s, x0, eps, 999) + x0).abs().max().item())


@pytest.mark.parametrize('kind', ['linear', 'cosine'])
def test_velocity_is_eps_at_the_start_and_minus_x0_at_the_end(kind):
    "A round trip passes a v with swapped coefficients (and matching inverses); its two ends do not."
    assert velocity_ends_gap(velocity, kind) < 0.05
    swapped = lambda s, x0, eps, t: (extract(s.sqrt_one_minus_alphas_cumprod, t, x0.shape) * eps
                                     - extract(s.sqrt_alphas_cumprod, t, x0.shape) * x0)   # √(1−ᾱ) ε − √ᾱ x_0
    assert velocity_ends_gap(swapped, kind) > 0.5


# --- bad input --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('call, words', [
    (lambda: NoiseSchedule('cosinus'), 'linear, cosine, quadratic, sigmoid'),
    (lambda: NoiseSchedule('linear', T=1), '≥ 2'),
    (lambda: NoiseSchedule('linear', T=10.5), '≥ 2'),
    (lambda: q_sample(NoiseSchedule('linear', 100), torch.zeros(2, 3, 4, 4), torch.tensor([0, 100])), '0 … 99'),
    (lambda: q_step(NoiseSchedule('linear', 100), torch.zeros(1, 3, 4, 4), -1), '0 … 99'),
    (lambda: model_target(NoiseSchedule('linear', 100), 'noise', torch.zeros(1), torch.zeros(1), 0), 'eps, x0, v'),
])
def test_bad_input_one_line_value_error(call, words):
    with pytest.raises(ValueError) as e: call()
    assert words in str(e.value) and '\n' not in str(e.value)


def test_every_schedule_kind_is_listed():
    assert list(SCHEDULES) == KINDS


# --- the float64 source, the DDIM update, the degradation interface, the diffusers config ---------------------------

@pytest.mark.parametrize('kind', KINDS)
def test_schedule_keeps_its_float64_source(kind):
    s = NoiseSchedule(kind, 300)
    b = SCHEDULES[kind](300)                                           # β_t in float64, straight from the formula
    assert torch.equal(s.f64.betas, b) and torch.equal(s.f64.alphas_cumprod, torch.cumprod(1 - b, 0))
    for name in NoiseSchedule.names:
        f64 = getattr(s.f64, name)
        assert f64.dtype == torch.float64 and f64.device.type == 'cpu', name
        assert torch.equal(getattr(s, name), f64.float()), name         # the float32 tensors are copies of it
    moved = s.to('cpu')
    assert moved.f64 is s.f64                                          # to(device) shares the source, copies nothing


def test_ddim_update():
    s, g = NoiseSchedule('cosine', 1000), torch.Generator().manual_seed(11)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    eps, z = torch.randn(2, 4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 990])
    ab = s.f64.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(ddim_update(x0, eps, extract(s.alphas_cumprod, t, x0.shape)), q_sample(s, x0, t, noise=eps))
    for i, ti in enumerate(t.tolist()):                                # float ᾱ' and σ, float64 weights
        sigma = 0.3 * math.sqrt(1 - ab[i].item())
        want = ab[i].sqrt() * x0[i] + (1 - ab[i] - sigma ** 2).sqrt() * eps[i] + sigma * z[i]   # √ᾱ' x̂_0 + √(1−ᾱ'−σ²) ε̂ + σ z
        got = ddim_update(x0[i], eps[i], ab[i].item(), sigma, noise=z[i])
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)
    w = ddim_weights(ab, torch.full_like(ab, 0.1))                     # tensors in, tensors out
    torch.testing.assert_close(w[1], (1 - ab - 0.01).clamp(min=0).sqrt())
    assert ddim_weights(0.5, 0.9) == (math.sqrt(0.5), 0.0)             # σ² > 1 − ᾱ': no ε̂ left, not NaN
    with pytest.raises(ValueError, match='noise') as e: ddim_update(x0, eps, 0.5, sigma=0.2)
    assert '\n' not in str(e.value)


def test_gaussian_noise_is_a_degradation():
    s = NoiseSchedule('linear', 200)
    noisy = GaussianNoise(s)
    x0, eps = torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 8, 8)
    t = torch.tensor([3, 150])
    assert isinstance(noisy, Degradation) and noisy.T == 200
    assert torch.equal(noisy.degrade(x0, t, noise=eps), q_sample(s, x0, t, noise=eps))          # a fixed ε
    a, b = (noisy.degrade(x0, t, generator=torch.Generator().manual_seed(1)) for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, noisy.degrade(x0, t, generator=torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError, match='0 … 199'): noisy.degrade(x0, 200)
    with pytest.raises(NotImplementedError): Degradation().degrade(x0, 0)


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('objective', OBJECTIVES)
def test_scheduler_config_describes_the_schedule(kind, objective):
    import json
    s = NoiseSchedule(kind, 1000)
    cfg = json.loads(json.dumps(scheduler_config(s, objective)))       # plain JSON
    assert cfg['num_train_timesteps'] == 1000 and cfg['prediction_type'] == PREDICTION_TYPES[objective]
    assert cfg['steps_offset'] == 0 and cfg['set_alpha_to_one'] and cfg['clip_sample'] and cfg['sample_max_value'] == 1
    if cfg['trained_betas'] is not None:
        betas = torch.tensor(cfg['trained_betas'], dtype=torch.float64)
    elif cfg['beta_schedule'] == 'linear':                             # how diffusers rebuilds them
        betas = torch.linspace(cfg['beta_start'], cfg['beta_end'], 1000, dtype=torch.float64)
    else:
        assert cfg['beta_schedule'] == 'scaled_linear'
        betas = torch.linspace(cfg['beta_start'] ** 0.5, cfg['beta_end'] ** 0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(betas, s.f64.betas, rtol=1e-12, atol=0)
    assert (cfg['trained_betas'] is None) == (kind in ('linear', 'quadratic'))
    assert scheduler_config(NoiseSchedule('linear', 10), objective)['trained_betas'] is not None     # clamped βs: the list
    assert not scheduler_config(s, objective, clip_x0=False)['clip_sample']


# --- where chapters save README figures ---------------------------------------------------------------------------------

def test_assets_dir_inside_and_outside_the_repository(tmp_path, monkeypatch):
    from face_diffusion.widgets import assets_dir, repo_root
    clone, other, plain = tmp_path / 'clone', tmp_path / 'other', tmp_path / 'content'
    for folder, name in [(clone, 'face-diffusion'), (other, 'someone-else')]:
        (folder / 'nbs').mkdir(parents=True)
        (folder / 'pyproject.toml').write_text(f'[project]\nname = "{name}"\n')
    plain.mkdir()
    monkeypatch.chdir(clone / 'nbs')                                   # a chapter runs from nbs/
    assert repo_root() == clone.resolve() and assets_dir() == clone.resolve() / 'assets'
    assert assets_dir(in_repo=False) != clone.resolve() / 'assets'     # tests leave the repository's figures alone
    for where in [other / 'nbs', plain]:                               # another project, or Colab's /content
        monkeypatch.chdir(where)
        assert repo_root() is None
        d = assets_dir()
        assert d.is_dir() and tmp_path.resolve() not in d.resolve().parents
        (d / 'forward_process.png').write_bytes(b'png')               # saving never fails
