"""Tests of face_diffusion.cascade (chapter 12): box downsampling and bilinear upsampling, conditioning augmentation
z = y + s ξ, the Trainer's super-resolution condition, training and resuming a super-resolution run, upscaling (what
the model is told, reproducibility, refusals), the two-stage cascade, and small faces read from photos."""
import dataclasses, json, math, shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from face_diffusion import cascade
from face_diffusion.cascade import (DEFAULT_LEVEL, LOW_SIZE, SuperResCondition, augment, cascade_sample, check_low_res,
                                    downsample, is_superres_run, load_small_face, low_size, resume_superres,
                                    superres_condition, superres_unet, upsample, upscale)
from face_diffusion.data import load_image, synthetic_faces, to_float
from face_diffusion.runs import DataSource, checkpoints, load_run, read_config
from face_diffusion.sampling import sample_run
from face_diffusion.training import TrainConfig, Trainer
from face_diffusion.unet import Condition, UNetConfig
from one_line import refused

TINY64 = UNetConfig.preset('tiny', image_size=64, attention_resolutions=(16,))   # the tiny preset's sides at 64 px: 64, 32, 16
MAX = 0.3                                                                      # the trained run's max_level (not the default)


def gen(seed=0): return torch.Generator().manual_seed(seed)


def faces(n=4, size=64, seed=1):
    return to_float(synthetic_faces(n, size, seed=seed)[0])


# --- D and U ---

@pytest.mark.parametrize('size', [4, 2, 1])
def test_downsample_is_the_mean_of_each_block(size):
    x = torch.randn(2, 3, 8, 8, generator=gen())
    k = 8 // size
    by_hand = torch.empty(2, 3, size, size)
    for i in range(size):
        for j in range(size):
            by_hand[..., i, j] = x[..., i * k:(i + 1) * k, j * k:(j + 1) * k].mean((-2, -1))
    assert downsample(x, size).shape == (2, 3, size, size)
    assert torch.allclose(downsample(x, size), by_hand, atol=1e-6)


def test_downsample_keeps_an_image_of_its_size_and_refuses_other_sizes():
    x = torch.randn(2, 3, 8, 8, generator=gen())
    assert torch.equal(downsample(x, 8), x)
    refused(lambda: downsample(x, 6), 'cannot box-downsample 8 px to 6 px', 'divides 8')
    refused(lambda: downsample(x, 3), '8 px to 3 px')
    refused(lambda: downsample(x, 16), '8 px to 16 px')


def test_upsample_is_bilinear_it_keeps_constants_ramps_and_the_mean():
    constant = torch.full((2, 3, 8, 8), 0.37)
    assert torch.allclose(upsample(constant, 16), torch.full((2, 3, 16, 16), 0.37), atol=1e-6)
    # a ramp along the width: output pixel j samples the input at (j + ½)/2 − ½, clamped to the edge pixels
    ramp = torch.arange(4.).expand(1, 3, 4, 4)
    expected = (torch.arange(8.) / 2 - 0.25).clamp(0, 3).expand(1, 3, 8, 8)
    assert torch.allclose(upsample(ramp, 8), expected, atol=1e-6)
    assert torch.allclose(upsample(ramp.transpose(-1, -2), 8), expected.transpose(-1, -2), atol=1e-6)
    y = torch.randn(2, 3, 16, 16, generator=gen(1))
    assert upsample(y, 32).shape == (2, 3, 32, 32)
    assert torch.allclose(upsample(y, 32).mean((-2, -1)), y.mean((-2, -1)), atol=1e-5)   # each pixel's weights sum to 4


def test_downsampling_the_upsampled_smooth_image_gives_it_back():
    u = torch.arange(32.)
    y = (torch.sin(2 * math.pi * u / 32)[:, None] * torch.cos(2 * math.pi * u / 32)[None, :]).expand(2, 3, 32, 32)
    back = downsample(upsample(y, 64), 32)
    assert back.shape == y.shape
    assert (back - y).abs().max() < 0.05                          # the edges: clamped, a first difference / 8
    assert (back - y)[..., 1:-1, 1:-1].abs().max() < 0.01         # inside: y + Δy / 8
    assert (upsample(y, 64) - y.repeat_interleave(2, -1).repeat_interleave(2, -2)).abs().max() > 0.01   # not nearest


# --- augmentation z = y + s ξ ---

def test_augment_adds_gaussian_noise_of_standard_deviation_s():
    low = faces(4, 64)
    z = augment(low, 0.3, gen(5))
    assert z.shape == low.shape and z.dtype == low.dtype
    noise = z - low
    assert torch.allclose(noise, 0.3 * torch.randn(low.shape, generator=gen(5)), atol=1e-6)   # ξ: the generator's next normals
    std, mean = noise.flatten(1).std(1), noise.flatten(1).mean(1)     # 12 288 values per image: standard error 0.7 %
    assert ((std - 0.3).abs() < 0.3 * 0.05).all(), std
    assert (mean.abs() < 0.3 * 0.05).all(), mean
    assert torch.equal(augment(low, 0.0, gen(5)), low)                # s = 0: nothing added
    assert torch.equal(augment(low, torch.tensor(0.3), gen(5)), z) and torch.equal(augment(low, [0.3], gen(5)), z)


def test_each_image_gets_its_own_level():
    low = faces(4, 64)
    levels = torch.tensor([0.0, 0.2, 0.0, 1.0])
    z = augment(low, levels, gen(2))
    assert torch.equal(z[0], low[0]) and torch.equal(z[2], low[2])
    std = (z - low).flatten(1).std(1)
    assert abs(std[1] - 0.2) < 0.2 * 0.05 and abs(std[3] - 1.0) < 0.05, std
    xi = torch.randn(low.shape, generator=gen(2))
    assert torch.allclose(z, low + levels.view(-1, 1, 1, 1) * xi, atol=1e-6)
    assert torch.allclose(augment(low, levels.tolist(), gen(2)), z)


def test_augment_draws_fresh_noise_from_the_generators_state():
    low = faces(2, 32)
    g = gen(7)
    first, second = augment(low, 0.5, g), augment(low, 0.5, g)       # the generator moved on
    assert (first - second).abs().mean() > 0.3
    assert torch.equal(augment(low, 0.5, gen(7)), first)             # the same state, the same noise
    assert (augment(low, 0.5, gen(8)) - first).abs().mean() > 0.3
    other = faces(2, 32, seed=9)                                     # the noise does not depend on the images
    assert torch.allclose(augment(other, 0.5, gen(7)) - other, first - low, atol=1e-6)


@pytest.mark.parametrize('level, fragments', [
    (-0.1, ('must lie in [0, 1]', '-0.1')), (1.5, ('must lie in [0, 1]', '1.5')), (float('nan'), ('must lie in [0, 1]',)),
    (float('inf'), ('must lie in [0, 1]',)), ([0.1, 0.2], ('2 augmentation levels for 3 images',)),
    (torch.full((4,), 0.1), ('4 augmentation levels for 3 images',)), ([0.1, 1.2, 0.1], ('must lie in [0, 1]', '1.2')),
], ids=['negative', 'above 1', 'nan', 'inf', 'two for three', 'four for three', 'one bad of three'])
def test_bad_levels_are_refused_in_one_line(level, fragments):
    low = faces(3, 32)
    refused(lambda: augment(low, level, gen()), *fragments)
    refused(lambda: superres_condition(low, 64, level, gen()), *fragments)


def test_superres_condition_is_the_upsampled_augmented_image_and_the_levels():
    low = faces(3, 32)
    levels = torch.tensor([0.0, 0.1, 0.4])
    c = superres_condition(low, 64, levels, gen(3))
    assert isinstance(c, Condition) and c.attributes is None and c.drop is None
    assert c.image.shape == (3, 3, 64, 64)
    assert torch.allclose(c.image, upsample(augment(low, levels, gen(3)), 64), atol=1e-6)
    assert torch.equal(c.level, levels)
    one = superres_condition(low, 64, 0.25, gen(3))
    assert one.level.shape == (3,) and torch.equal(one.level, torch.full((3,), 0.25))


# --- the Trainer's condition ---

def test_batch_without_augmentation_is_exactly_the_blurred_image():
    x0 = faces(4, 64)
    c = SuperResCondition(max_level=0).batch(torch.arange(4), x0, gen(0))
    assert torch.equal(c.image, upsample(downsample(x0, 32), 64))
    assert torch.equal(c.level, torch.zeros(4))


def test_batch_draws_levels_uniformly_up_to_max_level_then_noises_each_image_with_its_own():
    cond = SuperResCondition(low_size=4, max_level=MAX)
    x0 = torch.rand(4000, 3, 8, 8, generator=gen(0)) * 2 - 1
    c = cond.batch(torch.arange(4000), x0, gen(11))
    s = c.level
    assert c.image.shape == (4000, 3, 8, 8)
    assert s.shape == (4000,) and s.min() >= 0 and s.max() <= MAX
    assert abs(s.mean() - MAX / 2) < 0.01, s.mean()                 # the mean of U(0, 0.3), ± 5 σ of 4000 draws
    assert s.min() < 0.03 * MAX and s.max() > 0.97 * MAX            # spread over the whole range
    assert (s[:2000] < MAX / 2).float().mean().sub(0.5).abs() < 0.05   # half of them below the middle
    # D, then z = y + s ξ with the levels drawn first from the same generator, then U
    g = gen(11)
    levels = torch.rand(4000, generator=g) * MAX
    assert torch.allclose(s, levels)
    assert torch.allclose(c.image, upsample(augment(downsample(x0, 4), levels, g), 8), atol=1e-6)


def test_preview_shrinks_the_first_training_images_at_the_preview_level():
    images = synthetic_faces(3, 64, seed=4)[0]
    cond = SuperResCondition(max_level=MAX)
    level = SuperResCondition.preview_level
    cond.check(superres_unet(TINY64), images)
    c = cond.preview(5)                                               # more than there are: they repeat
    first = to_float(images[[0, 1, 2, 0, 1]])
    assert c.image.shape == (5, 3, 64, 64) and torch.equal(c.level, torch.full((5,), level))
    assert torch.allclose(c.image, upsample(augment(downsample(first, 32), level, gen(0)), 64), atol=1e-6)
    assert torch.equal(cond.preview(5).image, c.image)                 # fixed noise: the grids are comparable
    capped = SuperResCondition(max_level=0.05)                         # never more noise than training saw
    capped.check(superres_unet(TINY64), images)
    assert torch.equal(capped.preview(2).level, torch.full((2,), 0.05))


def test_check_refuses_a_unet_without_the_superres_inputs():
    images = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    cond = SuperResCondition()
    cond.check(superres_unet(TINY64), images)                        # the right one passes
    for other in (TINY64, UNetConfig.preset('tiny', image_size=64, attention_resolutions=(16,), cond_image_channels=3),
                  UNetConfig.preset('tiny', image_size=64, attention_resolutions=(16,), cond_levels=True),
                  UNetConfig.preset('tiny', image_size=64, attention_resolutions=(16,), cond_image_channels=1, cond_levels=True)):
        refused(lambda: cond.check(other, images), 'superres_unet', 'cond_image_channels=3', 'cond_levels=True')


@pytest.mark.parametrize('side', [32, 48, 16, 40])
def test_check_refuses_training_images_that_are_not_a_larger_multiple(side):
    images = torch.zeros(2, 3, side, side, dtype=torch.uint8)
    refused(lambda: SuperResCondition().check(superres_unet(TINY64), images), 'from 32 px', f'these are {side} px',
            'e.g. 64 px')


def test_check_takes_larger_multiples():
    SuperResCondition().check(superres_unet(TINY64), torch.zeros(1, 3, 96, 96, dtype=torch.uint8))
    SuperResCondition(low_size=16).check(superres_unet(TINY64), torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_bad_settings_are_refused_in_one_line():
    for bad in (3, 0, 2.5, True, '32'):
        refused(lambda: SuperResCondition(low_size=bad), 'low_size', '≥ 4')
    for bad in (-0.1, 1.5, float('nan'), '0.3', True):
        refused(lambda: SuperResCondition(max_level=bad), 'max_level', 'a number in [0, 1]')
    refused(lambda: downsample(torch.zeros(1, 3, 8, 8), 0), 'cannot box-downsample 8 px to 0 px')
    refused(lambda: downsample(torch.zeros(1, 3, 8, 16), 4), 'square images', '8×16')


def test_the_record_and_the_unet():
    assert SuperResCondition().to_dict() == {'kind': 'superres', 'low_size': LOW_SIZE, 'max_level': cascade.MAX_LEVEL}
    assert SuperResCondition(16, 0.25).to_dict() == {'kind': 'superres', 'low_size': 16, 'max_level': 0.25}
    assert json.loads(json.dumps(SuperResCondition(max_level=0).to_dict()))['max_level'] == 0.0
    u = superres_unet(TINY64)
    assert u.cond_image_channels == 3 and u.cond_levels and u.cond_attributes == 0 and u.image_size == 64
    assert u.base_channels == TINY64.base_channels and u.channel_mults == TINY64.channel_mults
    default = superres_unet()
    assert default.image_size == 2 * LOW_SIZE and default.cond_image_channels == 3 and default.cond_levels
    assert default.base_channels == UNetConfig.preset('sr64').base_channels
    assert superres_unet(UNetConfig.preset('tiny'), image_size=32).image_size == 32


# --- a trained super-resolution run ---

def train_config(**kw):
    base = dict(steps=2, batch_size=4, warmup_steps=1, log_every=1, save_every=100, sample_every=0, sample_n=2,
                sample_steps=2, precision='fp32', seed=3)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "A tiny super-resolution run (32 → 64 px, max_level 0.3) and a tiny unconditional 32 px base run, 2 steps each."
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('runs')
    try:
        Trainer(superres_unet(TINY64), train_config(), DataSource('synthetic', 64, n=16, seed=0), root / 'sr',
                device='cpu', progress=False, condition=SuperResCondition(max_level=MAX)).fit()
        Trainer(UNetConfig.preset('tiny'), train_config(), DataSource('synthetic', 32, n=16, seed=0), root / 'base',
                device='cpu', progress=False).fit()
    finally: torch.set_num_threads(before)
    return root


@pytest.fixture(scope='module')
def sr(runs): return load_run(runs / 'sr')


@pytest.fixture(scope='module')
def base(runs): return load_run(runs / 'base')


class Recorder(nn.Module):
    "A model that keeps x_t and the condition of every call."
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x, t, cond=None):
        self.calls.append((x.clone(), cond))
        return self.model(x, t) if cond is None else self.model(x, t, cond=cond)


def recorded(run): return dataclasses.replace(run, model=Recorder(run.model))


def test_the_run_records_its_condition_and_trained_on_it(runs):
    config = read_config(runs / 'sr')
    assert config['condition'] == {'kind': 'superres', 'low_size': 32, 'max_level': MAX}
    assert config['unet']['cond_image_channels'] == 3 and config['unet']['cond_levels'] is True
    assert config['image_size'] == 64
    assert (runs / 'sr' / 'samples' / 'step_000002.png').is_file()             # the preview drew with its condition
    w = load_run(runs / 'sr', use_ema=False).model.state_dict()
    assert w['conv_in.weight'][:, 3:].abs().sum() > 0                          # the small image was read


def test_is_superres_run_and_low_size(sr, base):
    assert is_superres_run(sr) and not is_superres_run(base)
    older = dataclasses.replace(base, config={k: v for k, v in base.config.items() if k != 'condition'})
    assert not is_superres_run(older)
    assert low_size(sr) == 32
    refused(lambda: low_size(base), 'not a super-resolution model', '--condition superres')
    other = dataclasses.replace(sr, config={**sr.config, 'condition': {**sr.config['condition'], 'low_size': 16}})
    assert low_size(other) == 16


def test_resume_superres_rebuilds_the_condition_from_the_run(runs, tmp_path):
    run = tmp_path / 'sr'
    shutil.copytree(runs / 'sr', run)
    refused(lambda: Trainer.resume(run, device='cpu', progress=False), str(run), 'conditioned', 'superres')
    refused(lambda: Trainer.resume(run, device='cpu', progress=False), 'cascade.resume_superres')   # the message names the way
    from face_diffusion.conditioning import resume_conditioned                                  # chapter 10's resume refuses it
    refused(lambda: resume_conditioned(run, device='cpu', progress=False), "'superres'", 'cascade.resume_superres')
    resumed = resume_superres(run, extra_steps=1, device='cpu', progress=False)
    assert isinstance(resumed.condition, SuperResCondition)
    assert resumed.condition.to_dict() == read_config(run)['condition'] == {'kind': 'superres', 'low_size': 32, 'max_level': MAX}
    assert resumed.step == 2
    resumed.fit()
    assert load_run(run).step == 3 and [p.name for p in checkpoints(run)][-1] == 'step_000003'


def test_resume_superres_refuses_other_runs(runs, tmp_path):
    refused(lambda: resume_superres(runs / 'base', extra_steps=1, device='cpu', progress=False),
            str(runs / 'base'), 'is not a super-resolution run')
    run = tmp_path / 'layout'
    shutil.copytree(runs / 'sr', run)
    config = json.loads((run / 'config.json').read_text())
    config['condition'] = {'kind': 'layout', 'cells': 4}
    (run / 'config.json').write_text(json.dumps(config))
    refused(lambda: resume_superres(run, extra_steps=1, device='cpu', progress=False), 'is not a super-resolution run')


# --- upscale ---

def small_faces(n=2, seed=1):
    "uint8 32 px faces, shrunk from 64 px ones as the training images were."
    x = downsample(faces(n, 64, seed), 32)
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def test_upscale_gives_large_images_in_range_reproducibly(sr):
    low = small_faces()
    x = upscale(sr, low, steps=2)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(upscale(sr, low, steps=2), x)                              # seed 0 both times
    assert (upscale(sr, low, steps=2, seed=1) - x).abs().mean() > 1e-3
    assert torch.equal(upscale(sr, to_float(low), steps=2), x)                    # uint8 or float: the same faces
    assert torch.allclose(upscale(sr, to_float(low).double(), steps=2), x, atol=1e-6)
    assert torch.equal(check_low_res(sr, low), to_float(low))


def test_upscale_tells_the_model_the_augmented_image_and_the_level(sr):
    low = small_faces(3)
    y = to_float(low)
    for kw, level, seed in ((dict(level=0.25, seed=5), 0.25, 5), (dict(level=0.0, seed=6), 0.0, 6),
                            ({}, DEFAULT_LEVEL, 0)):                     # the defaults: s = 0.1, seed 0
        run = recorded(sr)
        upscale(run, low, steps=2, **kw)
        calls = run.model.calls
        assert len(calls) == 2                                       # DPM-Solver++, 2 steps
        g = gen(seed)                                                # one stream: ξ first, then x_T
        image = upsample(augment(y, level, g), 64)
        x_T = torch.randn(3, 3, 64, 64, generator=g)
        for _, cond in calls:
            assert torch.equal(cond.level, torch.full((3,), level)), cond.level
            assert cond.image.shape == (3, 3, 64, 64) and torch.allclose(cond.image, image, atol=1e-6)
        assert torch.equal(calls[0][0], x_T)
        if level == 0: assert torch.equal(calls[0][1].image, upsample(y, 64))   # s = 0: the small faces as they are


def test_upscale_refuses_bad_input_in_one_line(sr, base):
    low = small_faces()
    for bad in (torch.zeros(2, 3, 64, 64), torch.zeros(3, 32, 32), torch.zeros(2, 1, 32, 32), torch.zeros(2, 3, 32, 16)):
        refused(lambda: upscale(sr, bad, steps=2), '(N, 3, 32, 32)', str(tuple(bad.shape)))
    refused(lambda: upscale(sr, low.numpy(), steps=2), '(N, 3, 32, 32)', 'ndarray')
    refused(lambda: upscale(base, low, steps=2), 'not a super-resolution model')
    for value in (float('nan'), float('inf')):
        bad = to_float(low).clone()
        bad[1, 2, 3, 4] = value
        refused(lambda: upscale(sr, bad, steps=2), 'NaN or infinite')
    refused(lambda: upscale(sr, low.float(), steps=2), 'must lie in [−1, 1]', 'as uint8')     # 0 … 255 given as floats
    refused(lambda: upscale(sr, low, level=1.5, steps=2), 'must lie in [0, 1]')
    refused(lambda: upscale(sr, low, level=-0.5, steps=2), 'must lie in [0, 1]')
    refused(lambda: upscale(sr, low, sampler='euler-ish', steps=2), "unknown sampler 'euler-ish'")


# --- the cascade ---

def test_cascade_upscales_the_base_models_faces_with_other_noise(sr, base):
    b, s = recorded(base), recorded(sr)
    large, small = cascade_sample(b, s, 2, seed=4, base_steps=2, sr_steps=2, level=0.2)
    assert large.shape == (2, 3, 64, 64) and small.shape == (2, 3, 32, 32)
    assert large.min() >= -1 and large.max() <= 1 and small.min() >= -1 and small.max() <= 1
    assert torch.equal(small, sample_run(base, 2, steps=2, seed=4))               # the base stage: seed 4
    assert all(torch.equal(cond.level, torch.full((2,), 0.2)) for _, cond in s.model.calls)
    assert len(s.model.calls) == 2
    # the upscaler's noise is not the base model's: its ξ is not the base's x_T (nor its x_T that stream's next draw)
    base_x_T = b.model.calls[0][0]
    assert torch.equal(base_x_T, torch.randn(2, 3, 32, 32, generator=gen(4)))
    g = gen(4)
    same_stream = upsample(augment(small, 0.2, g), 64)
    assert (s.model.calls[0][1].image - same_stream).abs().mean() > 0.05
    assert (s.model.calls[0][0] - torch.randn(2, 3, 64, 64, generator=g)).abs().mean() > 0.5
    # and it is reproducible: the same seed, the same faces; another seed, other faces
    again, again_small = cascade_sample(base, sr, 2, seed=4, base_steps=2, sr_steps=2, level=0.2)
    assert torch.equal(again, large) and torch.equal(again_small, small)
    other, other_small = cascade_sample(base, sr, 2, seed=5, base_steps=2, sr_steps=2, level=0.2)
    assert (other_small - small).abs().mean() > 1e-3 and (other - large).abs().mean() > 1e-3


def test_cascade_refuses_stages_that_do_not_fit(sr, base):
    refused(lambda: cascade_sample(sr, sr, 1, base_steps=2, sr_steps=2), 'the base model makes 64 px images',
            'takes 32 px')
    refused(lambda: cascade_sample(base, base, 1, base_steps=2, sr_steps=2), 'not a super-resolution model')


# --- small faces from photos ---

def save_png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def test_a_photo_becomes_a_small_face_as_chapter_00_loads_it(tmp_path):
    rng = np.random.default_rng(0)
    path = save_png(tmp_path / 'face.png', rng.integers(0, 256, (70, 90, 3)))
    x = load_small_face(path)
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32)
    assert torch.equal(x, load_image(path, size=32))
    assert load_small_face(path, size=16).shape == (3, 16, 16)
    # the central square: a photo 96 wide and 64 high, green margins 16 px wide, then red and blue halves
    photo = np.zeros((64, 96, 3), np.uint8)
    photo[:] = (0, 200, 0)
    photo[:, 16:48] = (200, 0, 0)
    photo[:, 48:80] = (0, 0, 200)
    x = load_small_face(save_png(tmp_path / 'photo.png', photo)).int()
    assert x[1].max() < 20                                                       # the margins were cut off
    assert (x[:, :, 3:13] - torch.tensor([200, 0, 0]).view(3, 1, 1)).abs().max() <= 5   # (Lanczos rings at the edges)
    assert (x[:, :, 19:29] - torch.tensor([0, 0, 200]).view(3, 1, 1)).abs().max() <= 5
    exact = save_png(tmp_path / 'exact.png', rng.integers(0, 256, (32, 32, 3)))
    assert torch.equal(load_small_face(exact), load_image(exact))                # already 32×32: unchanged


def test_a_photo_smaller_than_the_face_is_refused_naming_its_size(tmp_path):
    path = save_png(tmp_path / 'tiny.png', np.zeros((24, 20, 3)))                 # 20 wide, 24 high
    refused(lambda: load_small_face(path), str(path), '20×24 px', 'at least 32×32')
    wide = save_png(tmp_path / 'wide.png', np.zeros((31, 100, 3)))
    refused(lambda: load_small_face(wide), '100×31 px')
    assert load_small_face(path, size=16).shape == (3, 16, 16)


def test_missing_and_corrupt_files_are_one_line(tmp_path):
    refused(lambda: load_small_face(tmp_path / 'nowhere.png'), 'nowhere.png', 'does not exist', error=FileNotFoundError)
    corrupt = tmp_path / 'corrupt.png'
    corrupt.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(range(256)) * 3)
    refused(lambda: load_small_face(corrupt), str(corrupt), 'not a readable image')
