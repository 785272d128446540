"""Tests of face_diffusion.cold (chapter 11): the degradations, the restoration loss and the Trainer's degradation hook,
Algorithms 1 and 2 (exactness, the error formula, the link to DDIM), the colour prior, sampling and restoring, the
widget's frames, and the command line's --degradation."""
import contextlib, io, json, math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from face_diffusion.cli import main
from face_diffusion.cold import (ALGORITHMS, Blur, ColdDegradation, ColdSampler, Fade, FixedNoise, GaussianMixture, Pixelate,
                                 channel_means, cold_frames, cold_train_config, degradation_from_dict, gaussian_blur,
                                 make_degradation, pairwise_spread, pixel_sizes, restore, resume_cold, run_degradation,
                                 sample_cold)
from face_diffusion.data import synthetic_faces, to_float
from face_diffusion.forward import NoiseSchedule, q_sample
from face_diffusion.runs import DataSource, checkpoints, load_run, read_config
from face_diffusion.sampling import DDIMSampler, GaussianOracle, sample
from face_diffusion.training import TrainConfig, Trainer, restoration_loss
from face_diffusion.unet import UNetConfig
from one_line import refused, run_main

UNET16 = UNetConfig.preset('tiny', image_size=16)


def faces(n=8, size=32, seed=1):
    return to_float(synthetic_faces(n, size, seed=seed)[0])


class Pattern(ColdDegradation):
    "D(x, t) = x + γ_t p: purely additive damage, a fixed pattern p (the case where Algorithm 2 is exact)."
    kind = 'pattern'
    def __init__(self, p, T=10):
        super().__init__(p.shape[-1], T)
        self.p, self.gammas = p, torch.linspace(0.1, 1.0, T)
    def degrade(self, x0, t, noise=None, generator=None):
        t = self._check_levels(t, x0)
        return x0 + self.gammas[t].reshape(-1, 1, 1, 1) * self.p


class Guesser(nn.Module):
    "A restoration 'network' that returns random images."
    def __init__(self, seed=0): super().__init__(); self.g = torch.Generator().manual_seed(seed)
    def forward(self, x_t, t, cond=None): return torch.rand(x_t.shape, generator=self.g) * 2 - 1


# --- the degradations ---

def test_blur_is_one_gaussian_of_the_summed_variances_and_ends_at_the_mean():
    x = faces()
    assert torch.allclose(gaussian_blur(gaussian_blur(x, 1.2), 0.9), gaussian_blur(x, math.hypot(1.2, 0.9)), atol=1e-5)
    u = torch.arange(-10, 11, dtype=torch.float64)
    g1 = torch.exp(-u ** 2 / (2 * 1.5 ** 2)); g1 = g1 / g1.sum()
    kernel = (g1[:, None] * g1[None, :]).float().expand(3, 1, 21, 21)
    direct = F.conv2d(F.pad(x, (10, 10, 10, 10), mode='circular'), kernel, groups=3)   # a circular convolution, pixel by pixel
    assert (direct - gaussian_blur(x, 1.5)).abs().max() < 1e-4
    blur = Blur(32, T=12)
    s = blur.sigmas
    steps = torch.arange(1, 12, dtype=torch.float64) * (s[0] / 1)          # the kernels' widths s_i = c (i + 1)
    assert torch.allclose(s[:-1] ** 2, torch.cumsum(steps ** 2, 0))         # σ_t² = Σ_{i≤t} s_i²
    assert abs(float(s[-2]) - 16) < 1e-9 and math.isinf(float(s[-1]))
    assert torch.allclose(blur.degrade(x, 11), x.mean((2, 3), keepdim=True).expand_as(x), atol=1e-6)


def test_pixelation_averages_blocks_and_ends_at_the_mean():
    x = faces()
    assert pixel_sizes(32, 15) == [25, 20, 16, 13, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    assert pixel_sizes(16, 15) == list(range(15, 0, -1))
    refused(lambda: pixel_sizes(16, 16), '2 … 15 levels')
    pix = Pixelate(32, T=15)
    blocks = x.reshape(8, 3, 8, 4, 8, 4).mean((3, 5)).repeat_interleave(4, 2).repeat_interleave(4, 3)
    assert torch.allclose(pix.degrade(x, pix.sizes.index(8)), blocks, atol=1e-6)
    assert torch.allclose(pix.degrade(x, 14), x.mean((2, 3), keepdim=True).expand_as(x), atol=1e-6)
    import face_diffusion.cold as cold, face_diffusion.data as data
    assert cold.pixelate is data.pixelate                                      # chapter 00's, under its old name too


def test_fade_grows_from_the_centre_to_one_grey_image():
    fade = Fade(32, T=25)
    assert (fade.masks[1:] >= fade.masks[:-1]).all() and fade.masks[0].mean() < 0.02
    assert fade.masks[5, 0, 16, 16] == 1 and fade.masks[5, 0, 0, 0] == 0          # the middle goes first
    assert torch.equal(fade.degrade(faces(), 24), torch.zeros(8, 3, 32, 32))


@pytest.mark.parametrize('degradation', [Blur(32, 20), Pixelate(32, 15), Fade(32, 25)], ids=lambda d: d.kind)
def test_degradations_are_linear_and_take_one_level_per_image(degradation):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 6, 3, 32, 32, generator=g)
    t = torch.tensor([0, 3, degradation.T - 1, 3, 7, 1])
    assert torch.allclose(degradation.degrade(2 * a - 3 * b, t), 2 * degradation.degrade(a, t) - 3 * degradation.degrade(b, t), atol=1e-5)
    one_by_one = torch.cat([degradation.degrade(a[i:i + 1], int(level)) for i, level in enumerate(t)])
    assert torch.allclose(degradation.degrade(a, t), one_by_one, atol=1e-6)


def test_fixed_noise_is_the_forward_process_and_its_implied_noise_reproduces_x_t():
    noise, x = FixedNoise(32, T=1000), faces()
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    x_t = noise.degrade(x, 400, noise=eps)
    assert torch.equal(x_t, q_sample(NoiseSchedule('cosine', 1000), x, 400, noise=eps))
    guess = x.flip(0)
    assert torch.allclose(noise.degrade(guess, 400, noise=noise.implied_noise(x_t, guess, 400)), x_t, atol=1e-5)
    assert Blur(32, 10).implied_noise(x_t, guess, 4) is None                    # a deterministic damage has none


def test_bad_levels_sizes_and_names_are_one_line():
    x = faces(2)
    refused(lambda: Blur(32, 10).degrade(x, 10), 'level t = 10 is outside 0 … 9')
    refused(lambda: Pixelate(32, 15).degrade(x, torch.tensor([0, -1])), 'level t = -1')
    refused(lambda: Blur(16, 10).degrade(x, 3), 'images are 32×32', 'image_size=32')
    refused(lambda: make_degradation('smudge'), "unknown degradation 'smudge'", 'blur, pixelate, fade, noise')
    refused(lambda: Blur(32, 1), 'T = 1 must be a whole number ≥ 2')


def test_records_round_trip_through_json_with_the_prior():
    images = synthetic_faces(300, 32, seed=0)[0]
    for d in (make_degradation('blur', 32, images=images), make_degradation('pixelate', 32, T=9, images=images),
              make_degradation('fade', 32, T=7), make_degradation('noise', 32, T=200, schedule='linear')):
        again = degradation_from_dict(json.loads(json.dumps(d.to_dict())))
        assert again == d and type(again) is type(d) and again.T == d.T
    blur = make_degradation('blur', 32, images=images)
    assert blur.prior is not None and len(blur.to_dict()['prior']['weights']) == 10
    assert Blur(32) != blur                                                    # the prior is part of the record


# --- the colour prior and the starts ---

def test_gaussian_mixture_recovers_a_known_mixture():
    g = torch.Generator().manual_seed(0)
    points = torch.cat([0.05 * torch.randn(3000, 3, generator=g) + torch.tensor([0.5, 0.0, -0.5]),
                        0.10 * torch.randn(1000, 3, generator=g) - 0.3])
    mix = GaussianMixture.fit(points, 2)
    order = mix.weights.argsort(descending=True)
    assert torch.allclose(mix.weights[order], torch.tensor([0.75, 0.25], dtype=torch.float64), atol=0.02)
    assert torch.allclose(mix.means[order], torch.tensor([[0.5, 0, -0.5], [-0.3, -0.3, -0.3]], dtype=torch.float64), atol=0.02)
    assert torch.allclose(mix.covariances[order[0]].diagonal(), torch.full((3,), 0.05 ** 2, dtype=torch.float64), rtol=0.15)
    drawn = mix.sample(20_000, torch.Generator().manual_seed(1))
    assert torch.allclose(drawn.mean(0).double(), points.mean(0).double(), atol=0.02)
    assert torch.allclose(drawn.std(0).double(), points.std(0).double(), rtol=0.05)
    assert float(mix.log_prob(points).mean()) > float(GaussianMixture.fit(points, 1).log_prob(points).mean())
    refused(lambda: GaussianMixture.fit(points[:3], 5), '3 points cannot fit 5 components')


def test_starts_are_flat_colours_with_a_little_noise():
    images = synthetic_faces(300, 32, seed=0)[0]
    assert torch.allclose(channel_means(images), to_float(images).double().mean((2, 3)))
    blur = make_degradation('blur', 32, images=images)
    quiet = blur.start(64, torch.Generator().manual_seed(3), start_noise=0.0)
    noisy = blur.start(64, torch.Generator().manual_seed(3))
    assert (quiet == quiet[:, :, :1, :1]).all()                                           # one colour per image
    assert abs(float((noisy - quiet).std()) - 0.002) < 2e-4                               # plus noise of std 0.002
    refused(lambda: Blur(32).start(4), 'no colour prior', 'fit_prior')
    refused(lambda: Fade(32).start(4), 'cannot generate', 'restore')
    assert FixedNoise(32, T=100).start(4, torch.Generator().manual_seed(0)).shape == (4, 3, 32, 32)
    assert FixedNoise(32, T=100).start(2, channels=1).shape == (2, 1, 32, 32)


def test_can_start_says_which_degradations_can_generate():
    images = synthetic_faces(300, 32, seed=0)[0]
    assert make_degradation('blur', 32, images=images).can_start() and make_degradation('pixelate', 32, images=images).can_start()
    assert not Blur(32).can_start() and not Pixelate(32).can_start()          # no colour prior yet
    assert not Fade(32).can_start() and FixedNoise(32, T=100).can_start()


# --- the samplers ---

def test_algorithm_2_is_exact_for_an_image_independent_damage_and_algorithm_1_is_not():
    "D(x, t) = x + γ_t p: Algorithm 2 returns x_0 exactly whatever the network guesses (the paper's section 3.3)."
    x0 = faces()
    pattern = Pattern(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
    start = pattern.degrade(x0, pattern.T - 1)
    for steps in (10, 4):                                                      # every level, and skipping levels
        two = sample(Guesser(), ColdSampler(pattern, 2, steps=steps, clip_x0=False), 8, 32, x_T=start)
        guesses = []
        one = sample(Guesser(), ColdSampler(pattern, 1, steps=steps, clip_x0=False), 8, 32, x_T=start,
                     callback=lambda i, t, x_t, x0_hat: guesses.append(x0_hat))
        assert (two - x0).abs().max() < 1e-5
        assert (one - x0).abs().max() > 0.5 and torch.equal(one, guesses[-1])  # Algorithm 1: its last random guess


def test_algorithm_2_misses_by_the_sum_of_the_changes_of_the_errors_and_keeps_the_colour():
    "For affine D: x_{−1} − x_0 = δ_{T−1} + Σ_t (D(e_t, t') − D(e_t, t)); for blur the mean colour is kept exactly."
    x0, blur = faces(), Blur(32, T=12)
    errors = {t: 0.3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(100 + t)) for t in range(blur.T)}
    class KnownErrors(nn.Module):
        def forward(self, x_t, t, cond=None): return x0 + errors[int(t[0])]
    D = lambda x, t: x if t < 0 else blur.degrade(x, t)
    predicted = sum(D(errors[t], t - 1) - D(errors[t], t) for t in range(blur.T))
    start = blur.degrade(x0, blur.T - 1)
    two = sample(KnownErrors(), ColdSampler(blur, 2, clip_x0=False), 8, 32, x_T=start)
    one = sample(KnownErrors(), ColdSampler(blur, 1, clip_x0=False), 8, 32, x_T=start)
    assert (two - x0 - predicted).abs().max() < 1e-4
    assert (one - x0 - errors[0]).abs().max() < 1e-5                          # Algorithm 1: the last guess, all its error
    assert (two.mean((2, 3)) - x0.mean((2, 3))).abs().max() < 1e-5
    assert (one.mean((2, 3)) - x0.mean((2, 3))).abs().max() > 1e-3
    delta = 0.01 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))   # a start off the true path
    off = sample(KnownErrors(), ColdSampler(blur, 2, clip_x0=False), 8, 32, x_T=start + delta)
    assert (off - x0 - predicted - delta).abs().max() < 1e-4                  # δ_{T−1} passes straight through


@pytest.mark.parametrize('objective', ['x0', 'v', 'eps'])
def test_cold_sampling_with_noise_is_ddim(objective):
    schedule = NoiseSchedule('cosine', 1000)
    oracle = GaussianOracle(schedule, objective, mean=0.1, std=0.4)
    noise = FixedNoise(32, schedule=schedule)
    x_T = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ddim = sample(oracle, DDIMSampler(schedule, objective, steps=20, spacing='trailing'), 4, 32, x_T=x_T)
    for alg in ALGORITHMS:
        cold = sample(oracle, ColdSampler(noise, alg, steps=20, objective=objective), 4, 32, x_T=x_T)
        assert (cold - ddim).abs().max() < 1e-4, alg
    fixed, seen = ColdSampler(noise, 2, steps=20, objective=objective, fix_noise=True), []
    first = sample(oracle, fixed, 4, 32, x_T=x_T, callback=lambda i, t, x_t, x0_hat: seen.append((t, x0_hat)))
    assert (first - ddim).abs().max() > 0.05                                  # ε fixed at the first step is not DDIM
    ab = lambda t: float(schedule.sqrt_alphas_cumprod[t]) if t >= 0 else 1.0  # √ᾱ_t, with √ᾱ_{−1} = 1
    weights = [ab(seen[0][0])] + [ab(fixed.prev_timestep(t)) - ab(t) for t, _ in seen]
    average = weights[0] * seen[0][1] + sum(w * g for w, (_, g) in zip(weights[1:], seen))
    assert min(weights) >= 0 and abs(sum(weights) - 1) < 1e-6
    assert (first - average).abs().max() < 1e-4                               # it returns a weighted average of its guesses
    assert torch.equal(sample(oracle, fixed, 4, 32, x_T=x_T), first)          # and its memory is reset between runs
    assert torch.equal(sample(oracle, fixed, 4, 32, x_T=x_T.flip(0)).flip(0), first)


def test_sampler_levels_and_refusals():
    blur = Blur(32, T=50)
    assert ColdSampler(blur).timesteps.tolist() == list(range(49, -1, -1))
    assert ColdSampler(FixedNoise(32, T=1000)).timesteps[0] == 999 and len(ColdSampler(FixedNoise(32, T=1000))) == 50
    assert ColdSampler(blur, steps=5, start=20).timesteps.tolist()[0] == 20
    refused(lambda: ColdSampler(blur, algorithm=3), 'unknown algorithm 3')
    refused(lambda: ColdSampler(blur, start=50), 'start = 50 is outside 0 … 49')
    refused(lambda: ColdSampler(blur, objective='v'), 'objective', 'noise degradation')
    refused(lambda: ColdSampler(blur, fix_noise=True), 'fix_noise')


def test_restore_from_a_level_with_a_perfect_network_returns_the_faces():
    x0 = faces()
    class Perfect(nn.Module):
        def forward(self, x_t, t, cond=None): return x0
    for d, t in ((Blur(32, 20), 9), (Pixelate(32, 15), 7), (Fade(32, 25), 12)):
        for alg in ALGORITHMS:
            assert torch.allclose(restore(Perfect(), d, d.degrade(x0, t), t, alg), x0.clamp(-1, 1), atol=1e-5), (d, alg)


def test_pairwise_spread():
    x = torch.zeros(3, 3, 4, 4); x[1] += 0.5; x[2] -= 0.5
    assert pairwise_spread(x[:1].expand(5, -1, -1, -1)) == 0
    assert abs(pairwise_spread(x) - math.sqrt((0.25 + 0.25 + 1.0) / 3)) < 1e-9       # RMS over the three pairs


# --- training ---

def test_restoration_loss_shows_the_network_D_x0_t_and_scores_it_against_x0_with_l1():
    x0, blur = faces(4), Blur(32, T=10)
    seen = {}
    class Recorder(nn.Module):
        def forward(self, x_t, t, cond=None): seen['x_t'], seen['t'] = x_t, t; return torch.zeros_like(x_t)
    t = torch.tensor([0, 3, 9, 5])
    loss = restoration_loss(Recorder(), blur, x0, 'l1', t=t)
    assert torch.allclose(seen['x_t'], blur.degrade(x0, t)) and torch.equal(seen['t'], t)
    assert torch.allclose(loss, x0.abs().mean())
    assert torch.allclose(restoration_loss(Recorder(), blur, x0, 'l2', t=t), x0.square().mean())
    drawn = restoration_loss(Recorder(), blur, x0, generator=torch.Generator().manual_seed(0), reduction='none')
    assert drawn.shape == (4,) and 0 <= int(seen['t'].min()) and int(seen['t'].max()) < 10


def tiny_trainer(tmp_path, degradation, steps=4, name='run', **kw):
    source = DataSource('synthetic', 16, n=64, seed=0)
    tc = cold_train_config(degradation, steps=steps, batch_size=4, log_every=1, save_every=2, sample_every=steps,
                           sample_n=4, precision='fp32', warmup_steps=0, **kw)
    return Trainer(UNET16, tc, source, tmp_path / name, device='cpu', progress=False, degradation=degradation)


def test_the_trainer_trains_on_degraded_images(tmp_path):
    "With a degradation, each training batch is x_t = D(x_0, t) at levels drawn from 0 … T−1."
    calls = []
    class Watched(Blur):
        def degrade(self, x0, t, noise=None, generator=None):
            calls.append(torch.as_tensor(t).clone()); return super().degrade(x0, t, noise, generator)
    trainer = tiny_trainer(tmp_path, Watched(16, T=20))
    trainer.train_step()
    assert len(calls) == 1 and calls[0].shape == (4,) and 0 <= int(calls[0].min()) and int(calls[0].max()) < 20


def test_training_records_the_degradation_and_resumes_exactly(tmp_path):
    images = synthetic_faces(64, 16, seed=0)[0]
    blur = make_degradation('blur', 16, T=20, images=images)
    straight = tiny_trainer(tmp_path, blur, name='straight').fit()
    half = tiny_trainer(tmp_path, blur, name='half').fit(max_steps=2)
    assert half.step == 2
    resumed = resume_cold(tmp_path / 'half', progress=False).fit()
    assert resumed.step == 4
    a, b = (load_file(tmp_path / n / 'ema.safetensors') for n in ('straight', 'half'))
    assert all(torch.equal(a[k], b[k]) for k in a)                            # resumed exactly
    cfg = read_config(tmp_path / 'straight')
    assert degradation_from_dict(cfg['degradation']) == blur and cfg['objective'] == 'x0' and cfg['train']['loss'] == 'l1'
    assert cfg['train']['min_snr_gamma'] is None and cfg['train']['T'] == 20
    assert (tmp_path / 'straight' / 'samples' / 'step_000004.png').is_file()   # the preview grid of a cold run
    run = load_run(tmp_path / 'straight')
    assert run_degradation(run) == blur
    x = sample_cold(run, 3, seed=5)
    assert x.shape == (3, 3, 16, 16) and torch.equal(x, sample_cold(run, 3, seed=5))
    refused(lambda: Trainer.resume(tmp_path / 'straight'), 'restores a degradation (blur)', 'face_diffusion.cold.resume_cold')
    refused(lambda: Trainer.resume(tmp_path / 'straight', degradation=Blur(16, T=20)), 'restores another degradation', 'prior')
    refused(lambda: resume_cold(tmp_path / 'nothing'), 'not a run folder', error=FileNotFoundError)


def test_a_noise_run_refuses_the_cold_resume_and_sampler(tmp_path):
    tc = TrainConfig(steps=2, batch_size=4, log_every=1, save_every=2, sample_every=2, sample_n=2, sample_steps=2, precision='fp32')
    Trainer(UNET16, tc, DataSource('synthetic', 16, n=16), tmp_path / 'hot', device='cpu', progress=False).fit()
    assert 'degradation' not in read_config(tmp_path / 'hot')                   # unconditional runs are as before
    refused(lambda: resume_cold(tmp_path / 'hot'), 'restores no degradation', 'Trainer.resume')
    refused(lambda: run_degradation(load_run(tmp_path / 'hot')), 'no degradation', 'FixedNoise')


def test_trainer_refuses_settings_a_restoration_network_cannot_use(tmp_path):
    blur, source = Blur(16, T=20), DataSource('synthetic', 16, n=16)
    make = lambda **kw: Trainer(UNET16, TrainConfig(**kw), source, tmp_path / 'r', device='cpu', degradation=blur)
    refused(lambda: make(objective='v', min_snr_gamma=None, T=20), "objective='x0'")
    refused(lambda: make(objective='x0', min_snr_gamma=5.0, T=20), 'min_snr_gamma=None')
    refused(lambda: make(objective='x0', min_snr_gamma=None, T=1000), 'T = 20 levels', 'T = 1000')
    from face_diffusion.conditioning import LayoutCondition
    with_layout = UNetConfig.preset('tiny', image_size=16, cond_image_channels=3)
    refused(lambda: Trainer(with_layout, cold_train_config(blur), source, tmp_path / 'r', device='cpu', degradation=blur,
                            condition=LayoutCondition()), 'a degradation and a condition together')
    assert not (tmp_path / 'r').exists()                                       # refused before anything is written


# --- the widget's frames ---

def test_cold_frames_run_forward_and_back():
    x0 = faces(2)
    class Perfect(nn.Module):
        def forward(self, x_t, t, cond=None): return x0
    blur = Blur(32, T=20)
    frames, labels, ts = cold_frames(Perfect(), blur, x0, levels=5, start_noise=0.0)
    assert frames.shape[:3] == (6, 3, 3) and frames.dtype == torch.uint8
    assert ts == [-1, 4, 8, 11, 15, 19] and labels[0] == 'clean' and labels[-1] == 't = 19'
    from face_diffusion.data import image_grid
    grid = lambda x: torch.from_numpy(image_grid(x.clamp(-1, 1), nrow=2)).permute(2, 0, 1)
    for i, t in enumerate(ts):
        forward = x0 if t < 0 else blur.degrade(x0, t)
        assert torch.equal(frames[i, 0], grid(forward))                        # left: D(x_0, t)
        assert (frames[i, 1].int() - grid(forward).int()).abs().max() <= 1     # a perfect network retraces the path back


# --- the command line ---

def one_line_error(code, err, *words):
    assert code == 2, err
    assert err.startswith('face-diffusion: error:') and len(err.strip().splitlines()) == 1, err
    for w in words: assert w in err, (w, err)


TINY = ['--model', 'tiny', '--size', '16', '--n-images', '32', '--batch', '4']


def test_cli_trains_samples_and_resumes_a_cold_run(tmp_path):
    run = tmp_path / 'blur'
    code, _, err = run_main('train', *TINY, '--steps', '2', '--degradation', 'blur', '--T', '12', '--out', run)
    assert code == 0, err
    cfg = read_config(run)
    assert cfg['degradation']['kind'] == 'blur' and cfg['degradation']['T'] == 12 and cfg['degradation']['prior']
    assert cfg['objective'] == 'x0' and cfg['train']['loss'] == 'l1' and cfg['train']['T'] == 12
    a, b = tmp_path / 'a.png', tmp_path / 'b.png'
    for path in (a, b):
        code, out, err = run_main('sample', '--run', run, '--n', '4', '--seed', '3', '--out', path)
        assert code == 0 and 'cold blur, Algorithm 2' in out, err
    assert np.array_equal(np.array(Image.open(a)), np.array(Image.open(b)))
    expected = sample_cold(load_run(run), 4, seed=3)
    from face_diffusion.data import image_grid
    assert np.array_equal(np.array(Image.open(a).convert('RGB')), image_grid(expected))   # the cold sampler, not a noise one
    code, _, err = run_main('train', '--out', run, '--resume', '--steps', '2')
    assert code == 0, err
    assert [p.name for p in checkpoints(run)][-1] == 'step_000004'
    one_line_error(*run_main('train', '--out', run, '--resume', '--degradation', 'pixelate')[::2],
                   '--degradation pixelate contradicts', 'which has blur')
    one_line_error(*run_main('sample', '--run', run, '--eta', '0.5', '--out', tmp_path / 'c.png')[::2], '--eta and --spacing')


def test_cli_refuses_bad_degradation_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(*run_main('train', '--degradation', 'smudge')[::2], "invalid choice: 'smudge'")
    for extra, words in ((['--objective', 'v'], 'predicts x0'), (['--min-snr', '5'], 'drop it'),
                         (['--schedule', 'linear'], 'for --degradation noise'),
                         (['--T', '40'], 'pixelation of 16 px images has 2 … 15 levels'),
                         (['--condition', 'layout'], 'not supported')):
        deg = 'pixelate' if extra[0] == '--T' else 'blur'
        one_line_error(*run_main('train', *TINY, '--steps', '1', '--degradation', deg, *extra, '--out', tmp_path / 'r')[::2], *words)
    assert not (tmp_path / 'r').exists()
    hot = tmp_path / 'hot'
    assert run_main('train', *TINY, '--steps', '1', '--out', hot)[0] == 0
    one_line_error(*run_main('train', '--out', hot, '--resume', '--degradation', 'blur')[::2], 'no degradation (a noise model)')


def test_cli_fade_run_cannot_generate(tmp_path):
    run = tmp_path / 'fade'
    assert run_main('train', *TINY, '--steps', '1', '--degradation', 'fade', '--out', run)[0] == 0
    one_line_error(*run_main('sample', '--run', run, '--n', '2', '--out', tmp_path / 'f.png')[::2], 'cannot generate')
