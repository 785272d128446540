"""Inpainting and editing (chapter 14): masks and their checks, RePaint's visiting order against the paper's, inpainting
against a hand-written loop and an exact denoiser, the statistics of a climb, the seam score, SDEdit's start and its
strengths, and attribute edits by DDIM inversion, on the bundled 32 px models with few steps."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from face_diffusion.conditioning import attribute_condition, run_schema, synthetic_codes
from face_diffusion.data import load_image, synthetic_faces, to_float
from face_diffusion.editing import (MASK_TOLERANCE, MASKS, check_hole, edge_jump, edit_attributes, image_grid_pair, inpaint,
                                    inpainting_frames, load_mask, load_photo_and_mask, named_mask, network_calls,
                                    repaint_schedule, sdedit, seam_score, start_at)
from face_diffusion.forward import q_sample
from face_diffusion.runs import load_run, pretrained_dir
from face_diffusion.sampling import DatasetOracle, DDIMSampler, DPMSolverSampler, make_sampler
from one_line import refused


@pytest.fixture(scope='module')
def base(): return load_run(pretrained_dir())


@pytest.fixture(scope='module')
def attr(): return load_run(pretrained_dir('attributes'))


@pytest.fixture(scope='module')
def held():
    "Held-out synthetic faces (float, 32 px) and their attribute codes."
    images, attributes = synthetic_faces(8, size=32, seed=1000)
    return to_float(images), synthetic_codes(attributes)


def gen(seed=0): return torch.Generator().manual_seed(seed)


def rms(a, b) -> float: return float((a - b).pow(2).mean().sqrt())


# ---- masks ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', list(MASKS))
def test_named_masks_are_their_fractions_of_the_side(name):
    top, bottom, left, right = MASKS[name]
    for size in (32, 64):
        hole = named_mask(name, size)
        assert hole.shape == (1, 1, size, size) and set(hole.unique().tolist()) == {0.0, 1.0}
        rows, cols = hole[0, 0].any(1).nonzero().flatten(), hole[0, 0].any(0).nonzero().flatten()
        assert (rows[0], rows[-1] + 1) == (round(top * size), round(bottom * size))
        assert (cols[0], cols[-1] + 1) == (round(left * size), round(right * size))
        assert hole.sum() == len(rows) * len(cols)                     # a filled rectangle


def test_named_mask_refuses_an_unknown_name():
    refused(lambda: named_mask('nose', 32), "unknown mask 'nose'", 'eyes, mouth, left, box')


def test_check_hole_takes_any_leading_shape():
    h = torch.zeros(8, 8); h[2:4, 2:5] = 1
    for given in (h, h[None], h[None, None], h.expand(3, 8, 8)[None].clone(), h.bool(), h.numpy()):
        got = check_hole(given, 8)
        assert got.shape == (1, 1, 8, 8) and got.dtype == torch.float32 and torch.equal(got[0, 0], h)


@pytest.mark.parametrize('make, words', [
    (lambda h: h[:, :6], ['the mask is 6×8 but the image is 8×8', 'same size']),
    (lambda h: h * 0.5, ['not black and white', 'part to fill white']),
    (lambda h: h * 0, ['all black: nothing to fill']),
    (lambda h: h * 0 + 1, ['all white: nothing is kept']),
])
def test_check_hole_refuses_in_one_line(make, words):
    h = torch.zeros(8, 8); h[2:4, 2:5] = 1
    refused(lambda: check_hole(make(h), 8), *words)


def save_gray(path, a):
    Image.fromarray(np.asarray(a, np.uint8)).save(path)
    return path


def test_load_mask_reads_white_as_the_hole_within_the_tolerance(tmp_path):
    a = np.zeros((10, 12), np.uint8); a[2:6, 3:9] = 255
    a[0, 0], a[2, 3] = MASK_TOLERANCE, 255 - MASK_TOLERANCE             # near black, near white: as black and white
    hole = load_mask(save_gray(tmp_path / 'm.png', a))
    assert hole.shape == (1, 1, 10, 12) and hole.dtype == torch.float32
    assert torch.equal(hole[0, 0], torch.from_numpy((a >= 128).astype(np.float32)))
    rgb = np.stack([a] * 3, -1)
    Image.fromarray(rgb).save(tmp_path / 'rgb.png')                     # an RGB mask reads the same
    assert torch.equal(load_mask(tmp_path / 'rgb.png'), hole)


@pytest.mark.parametrize('value', [MASK_TOLERANCE + 1, 128, 255 - MASK_TOLERANCE - 1])
def test_load_mask_refuses_grey_and_says_how_much(tmp_path, value):
    a = np.zeros((10, 10), np.uint8); a[:5] = 255; a[5:, :5] = value  # a quarter grey
    refused(lambda: load_mask(save_gray(tmp_path / 'm.png', a)), 'is not black and white (25 of 100 pixels are grey)',
            'paint the part to fill white')


def test_load_mask_refuses_missing_folders_and_junk(tmp_path):
    refused(lambda: load_mask(tmp_path / 'none.png'), 'none.png does not exist', error=FileNotFoundError)
    refused(lambda: load_mask(tmp_path), 'is a folder')
    (tmp_path / 'junk.png').write_bytes(b'not an image')
    refused(lambda: load_mask(tmp_path / 'junk.png'), 'junk.png is not a readable image')


# ---- a photo and its mask ------------------------------------------------------------------------------------------

W, H = 48, 40                                                            # a landscape photo: its centre square is 40×40 at x = 4


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(tmp_path / 'photo.png')
    return tmp_path / 'photo.png'


def test_photo_and_mask_are_cropped_and_resized_together(photo, tmp_path):
    a = np.zeros((H, W), np.uint8)
    a[:, 4:24] = 255                                                     # the left half of the centre square
    a[:, 44:] = 255                                                      # outside the square: cropped away
    image, hole = load_photo_and_mask(photo, save_gray(tmp_path / 'm.png', a), 32)
    assert image.shape == (1, 3, 32, 32) and image.dtype == torch.float32
    assert torch.equal(image[0], to_float(load_image(photo, 32)))       # the photo as every loader reads it
    want = torch.zeros(32, 32); want[:, :16] = 1
    assert hole.shape == (1, 1, 32, 32) and torch.equal(hole[0, 0], want)


def test_a_photo_smaller_than_the_model_is_enlarged_with_its_mask(tmp_path):
    Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(tmp_path / 'small.png')
    a = np.zeros((20, 24), np.uint8); a[:10, 2:22] = 255                 # the top half of the centre square
    image, hole = load_photo_and_mask(tmp_path / 'small.png', save_gray(tmp_path / 'm.png', a), 32)
    assert image.shape == (1, 3, 32, 32)
    want = torch.zeros(32, 32); want[:16] = 1
    assert torch.equal(hole[0, 0], want)


@pytest.mark.parametrize('mask, words', [
    ('other_size', ['is 40×48 but the image', 'is 48×40', 'make them the same size']),
    ('grey', ['is not black and white']),
    ('black', ['all black: nothing to fill']),
    ('white', ['all white: nothing is kept']),
    ('speck', ['brought to 32×32 px (its square centre) is all black']),
    ('outside', ['brought to 32×32 px (its square centre) is all black']),
    ('missing', ['missing.png does not exist']),
    ('corrupt', ['corrupt.png is not a readable image']),
])
def test_photo_and_mask_refused_in_one_line(photo, tmp_path, mask, words):
    a = np.zeros((H, W), np.uint8)
    if mask == 'other_size': a = np.zeros((W, H), np.uint8); a[5:9, 5:9] = 255   # turned: 40 wide, 48 high
    if mask == 'grey': a[:] = 128
    if mask == 'white': a[:] = 255
    if mask == 'speck': a[20, 24] = 255                                  # one pixel: gone at 32 px
    if mask == 'outside': a[:, :4] = 255                                 # only where the crop cuts
    if mask not in ('missing', 'corrupt'): save_gray(tmp_path / f'{mask}.png', a)
    if mask == 'corrupt': (tmp_path / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    error = FileNotFoundError if mask == 'missing' else ValueError
    message = refused(lambda: load_photo_and_mask(photo, tmp_path / f'{mask}.png', 32), *words, error=error)
    assert f'{mask}.png' in message


def test_photo_problems_are_refused_in_one_line(photo, tmp_path):
    a = np.zeros((H, W), np.uint8); a[10:20, 10:20] = 255
    m = save_gray(tmp_path / 'm.png', a)
    refused(lambda: load_photo_and_mask(tmp_path, m, 32), 'is a folder; name one image file')
    refused(lambda: load_photo_and_mask(tmp_path / 'none.jpg', m, 32), 'none.jpg does not exist', error=FileNotFoundError)
    (tmp_path / 'bad.jpg').write_bytes(b'GIF89a nonsense')
    refused(lambda: load_photo_and_mask(tmp_path / 'bad.jpg', m, 32), 'bad.jpg is not a readable image')


# ---- RePaint's order -----------------------------------------------------------------------------------------------

def paper_schedule(t_T, jump_length, jump_n_sample, n_sample=1):
    """The RePaint authors' get_schedule_jump (scheduler.py of Lugmayr et al. 2022) with its second and third jump levels
    at their defaults (length 1, one sample: no effect), written out here as the reference."""
    jumps = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
    t, ts = t_T, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if t + 1 < t_T - 1:
            for _ in range(n_sample - 1):                                 # n_sample = 1: nothing
                t += 1; ts.append(t)
                if t >= 0: t -= 1; ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1; ts.append(t)
    ts.append(-1)
    return ts


@pytest.mark.parametrize('steps, jump, resamples', [(250, 10, 10), (50, 5, 5), (10, 3, 2), (7, 3, 4), (10, 10, 3),
                                                    (10, 1, 3), (20, 7, 3), (12, 5, 1), (1, 1, 1), (3, 1, 2), (100, 25, 2)])
def test_repaint_schedule_is_the_papers(steps, jump, resamples):
    assert repaint_schedule(steps, jump, resamples) == paper_schedule(steps, jump, resamples)


@pytest.mark.parametrize('steps, jump', [(1, 1), (10, 3), (50, 10)])
def test_one_pass_goes_straight_down(steps, jump):
    assert repaint_schedule(steps, jump, 1) == list(range(steps - 1, -2, -1))
    assert network_calls(repaint_schedule(steps, jump, 1)) == steps


@pytest.mark.parametrize('steps, jump, resamples', [(50, 5, 5), (10, 3, 2), (23, 4, 3), (250, 10, 10)])
def test_repaint_climbs_back_jump_length_levels_at_each_jump_point(steps, jump, resamples):
    order = repaint_schedule(steps, jump, resamples)
    points = list(range(0, steps - jump, jump))
    assert order[0] == steps - 1 and order[-1] == -1 and min(order) == -1 and max(order) == steps - 1
    assert all(abs(b - a) == 1 for a, b in zip(order, order[1:]))      # one level at a time
    climbs, i = [], 1                                                    # (start, length) of each run upwards
    while i < len(order):
        if order[i] > order[i - 1]:
            start = i - 1
            while i < len(order) and order[i] > order[i - 1]: i += 1
            climbs.append((order[start], i - 1 - start))
        else: i += 1
    assert all(length == jump for _, length in climbs), climbs
    assert sorted(start for start, _ in climbs) == sorted(p for p in points for _ in range(resamples - 1))
    arrivals = lambda k: sum(1 for a, b in zip(order, order[1:]) if b == k and a == k + 1)   # reached from above
    assert all(arrivals(p) == resamples for p in points)
    assert network_calls(order) == steps + len(points) * (resamples - 1) * jump


def test_the_papers_setting_costs_2410_calls():
    assert network_calls(repaint_schedule(250, 10, 10)) == 2410


def test_network_calls_counts_the_steps_down():
    assert network_calls([3, 2, 3, 2, 1, 0, -1]) == 5 and network_calls([0, -1]) == 1 and network_calls([-1]) == 0


@pytest.mark.parametrize('kwargs, words', [
    (dict(steps=0), 'steps = 0 must be a whole number ≥ 1'), (dict(steps=-3), 'steps = -3'), (dict(steps=2.0), 'steps = 2.0'),
    (dict(steps=True), 'steps = True'), (dict(jump_length=0), 'jump_length = 0'), (dict(jump_length='5'), "jump_length = '5'"),
    (dict(resamples=0), 'resamples = 0'), (dict(resamples=1.5), 'resamples = 1.5'), (dict(resamples=False), 'resamples = False'),
])
def test_repaint_schedule_refuses_bad_arguments(kwargs, words):
    refused(lambda: repaint_schedule(**{'steps': 10, 'jump_length': 3, 'resamples': 2, **kwargs}), words)


# ---- inpainting ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('resamples', [1, 2])
def test_inpaint_keeps_the_kept_pixels_and_fills_the_hole(base, held, resamples):
    faces, hole = held[0][:4], named_mask('eyes', 32)
    out, calls = inpaint(base.model, base.schedule, base.objective, faces, hole, steps=10, jump_length=3, resamples=resamples,
                         generator=gen(0))
    assert out.shape == faces.shape and calls == network_calls(repaint_schedule(10, 3, resamples))
    assert torch.equal(out * (1 - hole), faces * (1 - hole))            # exactly the input
    inside = ((out - faces).abs() * hole).sum((1, 2, 3)) / (3 * hole.sum())
    assert (inside > 0.05).all(), inside                                 # the hole is the model's, not the input's
    assert out.min() >= -1 and out.max() <= 1
    again, _ = inpaint(base.model, base.schedule, base.objective, faces, hole, steps=10, jump_length=3, resamples=resamples,
                       generator=gen(0))
    other, _ = inpaint(base.model, base.schedule, base.objective, faces, hole, steps=10, jump_length=3, resamples=resamples,
                       generator=gen(1))
    assert torch.equal(again, out) and not torch.equal(other, out)      # the seed decides


def simple_inpaint_by_hand(model, schedule, x0, hole, steps, seed):
    """The simple method written out for a v-prediction model on a uniform grid: η = 1 DDIM steps, and after each one the
    kept pixels replaced by x_0 noised to the new level; the noise drawn in order: the kept pixels at the top, the hole,
    then per step the step's z (none on the last) and the kept pixels' ε."""
    T = schedule.T
    grid = [i * T // steps for i in range(steps)]                        # τ_0 < … < τ_{S−1}
    ab = schedule.f64.alphas_cumprod
    level = lambda k: float(ab[grid[k]]) if k >= 0 else 1.0
    g = gen(seed)
    draw = lambda: torch.randn(x0.shape, generator=g).double()
    keep, x0 = 1 - hole.double(), x0.double()
    a = level(steps - 1)
    x = keep * (math.sqrt(a) * x0 + math.sqrt(1 - a) * draw())
    x = x + (1 - keep) * draw()
    for k in range(steps - 1, -1, -1):
        a, a_next = level(k), level(k - 1)
        v = model(x.float(), torch.full((len(x),), grid[k])).double()
        x0_hat = (math.sqrt(a) * x - math.sqrt(1 - a) * v).clamp(-1, 1)   # x_0 = √ᾱ x_t − √(1−ᾱ) v
        eps = (x - math.sqrt(a) * x0_hat) / math.sqrt(1 - a)
        sigma = math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next))
        x_next = math.sqrt(a_next) * x0_hat + math.sqrt(1 - a_next - sigma ** 2) * eps
        if sigma > 0: x_next = x_next + sigma * draw()
        known = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * draw() if k > 0 else x0
        x = keep * known + (1 - keep) * x_next
    return x.clamp(-1, 1).float()


@pytest.mark.parametrize('name', ['eyes', 'left'])
def test_the_simple_method_is_the_loop_written_by_hand(base, held, name):
    faces, hole = held[0][:2], named_mask(name, 32)
    got, calls = inpaint(base.model, base.schedule, base.objective, faces, hole, steps=6, resamples=1, generator=gen(3))
    want = simple_inpaint_by_hand(base.model, base.schedule, faces, hole, 6, 3)
    assert calls == 6 and (got - want).abs().max() < 1e-4, (got - want).abs().max()


@pytest.mark.parametrize('seed, resamples', [(0, 1), (1, 1), (2, 3), (3, 3)])
def test_an_exact_denoiser_fills_the_hole_with_the_face(base, held, seed, resamples):
    "DatasetOracle knows 8 faces, one of them the input: the kept pixels single it out, and the hole gets its pixels."
    faces = held[0]
    face = faces[seed:seed + 1]
    oracle = DatasetOracle(base.schedule, faces, objective='v')
    hole = named_mask('left', 32)
    assert min(float(((f - face) * hole).abs().max()) for i, f in enumerate(faces) if i != seed) > 0.5   # the others differ there
    out, _ = inpaint(oracle, base.schedule, 'v', face, hole, steps=10, jump_length=3, resamples=resamples, generator=gen(seed))
    assert (out - face).abs().max() < 1e-3


def test_a_climb_noises_with_q_of_the_higher_level_given_the_lower():
    """Capture x at level a = 3 (after the step down to it) and at b = 6 (after the climb), with η = 0 and a model that
    predicts ε̂ = 0, so that x_a is known: in the hole, x_b = √(ᾱ_b/ᾱ_a) x_a + √(1 − ᾱ_b/ᾱ_a) z, z ~ N(0, I) apart
    from x_a."""
    from face_diffusion.forward import NoiseSchedule
    schedule = NoiseSchedule('cosine', 1000)
    seen = []
    def model(x, t):
        seen.append((int(t[0]), x.clone()))
        return torch.zeros_like(x)
    faces = to_float(synthetic_faces(8, size=32, seed=5)[0])
    hole = named_mask('left', 32).bool().expand_as(faces)
    steps, jump = 10, 3
    inpaint(model, schedule, 'eps', faces, hole[:1, :1].float(), steps=steps, jump_length=jump, resamples=2, eta=0.0,
            generator=gen(0))
    grid = [i * 1000 // steps for i in range(steps)]
    i = next(i for i in range(len(seen) - 1) if seen[i][0] == grid[4] and seen[i + 1][0] == grid[6])   # 4 → 3, climb to 6
    ab = schedule.f64.alphas_cumprod
    a_from, a_to, a_b = float(ab[grid[4]]), float(ab[grid[3]]), float(ab[grid[6]])
    x = seen[i][1].double()
    x0_hat = (x / math.sqrt(a_from)).clamp(-1, 1)                        # ε̂ = 0, clipped: ε̂ recomputed
    eps = (x - math.sqrt(a_from) * x0_hat) / math.sqrt(1 - a_from)
    x_a = (math.sqrt(a_to) * x0_hat + math.sqrt(1 - a_to) * eps)[hole]  # η = 0: no noise in the step
    x_b = seen[i + 1][1].double()[hole]
    r = a_b / a_to
    slope = float((x_a * x_b).sum() / (x_a * x_a).sum())
    residual = x_b - slope * x_a
    assert abs(slope - math.sqrt(r)) < 0.03, (slope, math.sqrt(r))
    assert abs(float(residual.std()) - math.sqrt(1 - r)) < 0.03, (float(residual.std()), math.sqrt(1 - r))
    assert abs(float(residual.mean())) < 0.05


def test_the_callback_sees_every_step_down_and_the_condition_reaches_the_model(base, held):
    order = repaint_schedule(8, 2, 3)
    grid = [i * 1000 // 8 for i in range(8)]
    told, steps = [], []
    def model(x, t, cond=None):
        told.append(cond)
        return base.model(x, t)
    callback = lambda i, t, x, x0_hat: steps.append((i, t, tuple(x.shape), tuple(x0_hat.shape)))
    _, calls = inpaint(model, base.schedule, base.objective, held[0][:2], named_mask('box', 32), steps=8, jump_length=2,
                       resamples=3, generator=gen(0), callback=callback, cond='the condition')
    downs = [grid[a] for a, b in zip(order, order[1:]) if b < a]
    assert calls == len(downs) == len(steps) == len(told) and told == ['the condition'] * calls
    assert [s[0] for s in steps] == list(range(calls)) and [s[1] for s in steps] == downs
    assert all(s[2] == s[3] == (2, 3, 32, 32) for s in steps)


def test_inpaint_refuses_a_hole_that_does_not_fit(base, held):
    faces = held[0][:1]
    call = lambda hole: lambda: inpaint(base.model, base.schedule, base.objective, faces, hole, steps=2)
    refused(call(named_mask('eyes', 16)), 'is 16×16 but the image is 32×32')
    refused(call(named_mask('eyes', 32) * 0.5), 'not black and white')
    refused(call(torch.zeros(32, 32)), 'all black: nothing to fill')
    refused(call(torch.ones(32, 32)), 'all white: nothing is kept')


# ---- the seam ------------------------------------------------------------------------------------------------------

def edge_jump_by_hand(images, hole):
    "Every neighbour pair, left-right and up-down, with one pixel in the hole and one outside: the mean |x_p − x_q|."
    h, x = hole[0, 0].bool(), images.double()
    total, pairs = torch.zeros(len(x), dtype=torch.float64), 0
    for r in range(h.shape[0]):
        for c in range(h.shape[1]):
            for r2, c2 in ((r, c + 1), (r + 1, c)):
                if r2 < h.shape[0] and c2 < h.shape[1] and h[r, c] != h[r2, c2]:
                    total += (x[:, :, r, c] - x[:, :, r2, c2]).abs().mean(1)
                    pairs += 1
    return total / pairs


@pytest.mark.parametrize('name', list(MASKS))
def test_edge_jump_is_the_mean_jump_across_the_edge(held, name):
    hole = named_mask(name, 32)
    assert torch.allclose(edge_jump(held[0][:3], hole).double(), edge_jump_by_hand(held[0][:3], hole), atol=1e-6)


def test_seam_score_is_one_for_the_originals_and_large_for_a_flat_fill(held):
    faces, hole = held[0], named_mask('box', 32)
    assert seam_score(faces, faces, hole) == pytest.approx(1.0)
    flat = faces * (1 - hole) + (-1.0) * hole                            # black: far from the faces' colours there
    assert seam_score(flat, faces, hole) > 2


def test_edge_jump_looks_only_at_the_edge(held):
    faces, hole = held[0][:2], named_mask('box', 32)                     # the box: rows and columns 10 … 21
    inner = faces.clone(); inner[..., 12:20, 12:20] = 1.0                # two pixels in from the edge: not looked at
    outer = faces.clone(); outer[..., 0:8, 0:8] = 1.0                    # far outside: not looked at either
    assert torch.equal(edge_jump(inner, hole), edge_jump(faces, hole)) and torch.equal(edge_jump(outer, hole), edge_jump(faces, hole))
    rim = faces.clone(); rim[..., 10, 12:20] = 1.0                       # the hole's top row: looked at
    assert not torch.allclose(edge_jump(rim, hole), edge_jump(faces, hole))


# ---- frames of an inpainting ---------------------------------------------------------------------------------------

def test_inpainting_frames_label_the_steps_and_passes(base, held):
    frames, labels = inpainting_frames(base.model, base.schedule, base.objective, held[0][:2], named_mask('eyes', 32),
                                       steps=6, jump_length=2, resamples=2, frames=100)
    calls = network_calls(repaint_schedule(6, 2, 2))
    assert frames.shape == (calls, 2, 3, 36, 70) and frames.dtype == torch.uint8 and len(labels) == calls
    assert labels[0] == 'step 1 of 10: t = 833, pass 1' and labels[-1] == 'step 10 of 10: t = 0, pass 3'
    few, few_labels = inpainting_frames(base.model, base.schedule, base.objective, held[0][:2], named_mask('eyes', 32),
                                        steps=6, jump_length=2, resamples=2, frames=4)
    assert len(few) == len(few_labels) == 4 and torch.equal(few[0], frames[0]) and torch.equal(few[-1], frames[-1])


def test_image_grid_pair_is_two_panels(held):
    pair = image_grid_pair(held[0][:4], -held[0][:4])
    assert pair.shape == (2, 3, 70, 70) and pair.dtype == torch.uint8 and not torch.equal(pair[0], pair[1])


def test_inpainting_widget_has_a_choice_per_hole(base, held):
    pytest.importorskip('ipywidgets')
    from face_diffusion.editing import inpainting_widget
    box = inpainting_widget(base.model, base.schedule, base.objective, held[0][:1],
                            {'eyes': named_mask('eyes', 32), 'mouth': named_mask('mouth', 32)}, steps=3, jump_length=1,
                            resamples=1, frames=3)
    assert list(box.dropdown.options) == ['eyes', 'mouth']


# ---- SDEdit --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('strength', [0.05, 0.31, 0.5, 0.77, 1.0])
def test_start_at_keeps_the_timesteps_at_or_below_t0(base, strength):
    for smp in (DDIMSampler(base.schedule, 'v', steps=10), DDIMSampler(base.schedule, 'v', steps=7, spacing='quadratic'),
                DPMSolverSampler(base.schedule, 'v', steps=20)):
        before = smp.timesteps.clone()
        t0 = round(strength * 999)
        if not (before <= t0).any(): continue
        assert start_at(smp, strength) is smp
        assert torch.equal(smp.timesteps, before[before <= t0])


@pytest.mark.parametrize('strength, words', [(0, 'strength = 0 must be a number in (0, 1]'), (-0.2, 'strength = -0.2'),
                                             (1.5, 'strength = 1.5'), (True, 'strength = True'), ('0.5', "strength = '0.5'"),
                                             (float('nan'), 'strength = nan'), (None, 'strength = None')])
def test_start_at_refuses_strengths_outside_zero_to_one(base, strength, words):
    refused(lambda: start_at(DDIMSampler(base.schedule, 'v', steps=10), strength), words)


def test_start_at_refuses_a_strength_below_the_first_step(base):
    smp = DPMSolverSampler(base.schedule, 'v', steps=10)                # trailing: the smallest timestep is 99
    before = smp.timesteps.clone()
    refused(lambda: start_at(smp, 0.05), 'strength = 0.05 is below the', '10 sampling', 'raise it or the steps')
    assert torch.equal(smp.timesteps, before)                            # left as it was


def test_sdedit_starts_from_the_guide_noised_to_t0(base, held):
    "The first x_t the model sees is √ᾱ_{t_0} y + √(1−ᾱ_{t_0}) ε, t_0 = 500 for strength 0.5 on a 10-step grid."
    guide, first = held[0], []
    sdedit(base.model, base.schedule, base.objective, guide, 0.5, steps=10, generator=gen(0),
           callback=lambda i, t, x, x0_hat: first.append((t, x)) if i == 0 else None)
    t, x = first[0]
    ab = float(base.schedule.f64.alphas_cumprod[500])
    assert t == 500
    noised = q_sample(base.schedule, guide, torch.full((len(guide),), 500), noise=torch.randn(guide.shape, generator=gen(0)))
    assert torch.allclose(x, noised, atol=1e-6)
    slope = float((x * guide).sum() / (guide * guide).sum())
    assert abs(slope - math.sqrt(ab)) < 0.05 and abs(float((x - slope * guide).std()) - math.sqrt(1 - ab)) < 0.03


def test_sdedit_keeps_more_of_the_guide_at_lower_strength(base, held):
    guide = held[0][:4]
    dist = {s: rms(sdedit(base.model, base.schedule, base.objective, guide, s, steps=10, generator=gen(0)), guide)
            for s in (0.05, 0.3, 1.0)}
    assert dist[0.05] < 0.02 and dist[0.05] < dist[0.3] < dist[1.0], dist


def test_sdedit_at_full_strength_forgets_the_guide(base, held):
    "dpm++'s trailing grid starts at t = 999, where √ᾱ ≈ 0: two different guides, one seed, the same faces."
    a = sdedit(base.model, base.schedule, base.objective, held[0][:4], 1.0, steps=10, sampler='dpm++', generator=gen(0))
    b = sdedit(base.model, base.schedule, base.objective, held[0][4:], 1.0, steps=10, sampler='dpm++', generator=gen(0))
    assert rms(held[0][:4], held[0][4:]) > 0.3 and rms(a, b) < 0.01
    c = sdedit(base.model, base.schedule, base.objective, held[0][:4], 1.0, steps=10, sampler='dpm++', generator=gen(1))
    assert rms(a, c) > 0.1                                                # the seed, not the guide, decides


def test_sdedit_with_ddpm_takes_every_step_below_t0(base, held):
    guide, ts = held[0][:2], []
    out = sdedit(base.model, base.schedule, base.objective, guide, 0.02, sampler='ddpm', generator=gen(0),
                 callback=lambda i, t, x, x0_hat: ts.append(t))
    assert ts == list(range(20, -1, -1)) and rms(out, guide) < 0.05 and out.shape == guide.shape


def test_sdedit_refuses_a_bad_strength_or_sampler(base, held):
    refused(lambda: sdedit(base.model, base.schedule, base.objective, held[0][:1], 0, steps=10), 'strength = 0')
    refused(lambda: sdedit(base.model, base.schedule, base.objective, held[0][:1], 0.5, sampler='euler'), "unknown sampler 'euler'")


# ---- attribute edits by inversion ----------------------------------------------------------------------------------

def test_a_round_trip_gives_the_faces_back(attr, held):
    faces, codes = held[0][:4], held[1][:4]
    back = edit_attributes(attr, faces, {}, source=codes, strength=0.6, guidance=1.0, steps=25)
    assert back.shape == faces.shape and rms(back, faces) < 0.05, rms(back, faces)
    blind = edit_attributes(attr, faces, {}, strength=0.6, guidance=1.0, steps=25)   # no labels: the null condition
    assert rms(blind, faces) < 0.05


def test_the_inversion_and_the_decoding_get_the_right_attributes(attr, held):
    "Inverted under the faces' own codes; decoded under them with glasses = round put in, the conditional half first."
    faces, codes = held[0][:3], held[1][:3]
    schema = run_schema(attr)
    g = schema.names.index('glasses')
    seen = []
    class Recorder(torch.nn.Module):
        def __init__(self): super().__init__(); self.config = attr.model.config
        def forward(self, x, t, cond=None):
            seen.append((len(x), cond)); return attr.model(x, t, cond)
    run = type(attr)(Recorder(), attr.schedule, attr.objective, attr.config, attr.run_dir)
    edit_attributes(run, faces, {'glasses': 'round'}, source=codes, strength=0.3, guidance=2.0, steps=10)
    own = attribute_condition(schema, codes, 3)
    target = codes.clone(); target[:, g] = schema.parse({'glasses': 'round'})[g]
    asked = attribute_condition(schema, target, 3)
    inverting = [c for n, c in seen if n == 3]
    decoding = [c for n, c in seen if n == 6]
    assert len(inverting) == len(decoding) == 4                          # t = 0, 100, 200, 300 each way
    for c in inverting: assert torch.equal(c.attributes, own.attributes) and torch.equal(torch.as_tensor(c.drop), own.drop)
    for c in decoding:
        assert torch.equal(c.attributes[:3], asked.attributes) and not torch.as_tensor(c.drop)[:3].any()
        assert torch.as_tensor(c.drop)[3:].all()                         # the unconditional half


def test_asking_for_glasses_changes_the_eyes_most(attr, held):
    images, attributes = synthetic_faces(16, size=32, seed=1000)
    codes = synthetic_codes(attributes)
    g = run_schema(attr).names.index('glasses')
    pick = (codes[:, g] == 0).nonzero().flatten()[:6]                    # faces without glasses
    faces = to_float(images[pick])
    out = edit_attributes(attr, faces, {'glasses': 'round'}, source=codes[pick], strength=0.8, guidance=3.0, steps=20)
    change = (out - faces).abs().mean((0, 1, 3))                         # per row
    eyes, bottom = float(change[12:17].mean()), float(change[24:].mean())
    assert eyes > 2 * bottom, (eyes, bottom)


@pytest.mark.parametrize('request_, words', [({'hat': 'yes'}, "unknown attribute 'hat'"),
                                             ({'glasses': 'monocle'}, "unknown value 'monocle' for attribute glasses"),
                                             (['glasses'], 'must look like name=value')])
def test_edit_attributes_refuses_unknown_attributes(attr, held, request_, words):
    refused(lambda: edit_attributes(attr, held[0][:1], request_, steps=5), words)


def test_edit_attributes_refuses_a_model_without_attributes_and_a_bad_strength(base, attr, held):
    refused(lambda: edit_attributes(base, held[0][:1], {'glasses': 'round'}, steps=5), 'this run is unconditional',
            'not conditioned on attributes')
    refused(lambda: edit_attributes(attr, held[0][:1], {}, strength=1.2, steps=5), 'strength = 1.2')
