"""Inpainting and editing on the command line (chapter 14): `inpaint IMG --mask M` and `edit IMG [--attr …]`, each checked
against the library call it stands for, on the bundled models, tiny runs made once per module and a real photo."""
import json, re

import numpy as np
import pytest
import torch
from PIL import Image

from face_diffusion.conditioning import DEFAULT_GUIDANCE, run_schema
from face_diffusion.data import load_image, to_float, to_uint8
from face_diffusion.editing import edit_attributes, inpaint, load_photo_and_mask, network_calls, repaint_schedule, sdedit
from face_diffusion.experts import load_ensemble
from face_diffusion.runs import load_run, pretrained_dir
from face_diffusion.unet import PRESETS
from one_line import one_line, pixels, run_main




def as_png(images) -> np.ndarray: return to_uint8(images[0]).permute(1, 2, 0).numpy()   # what a saved result holds


def hopper() -> str:
    from matplotlib import cbook
    return cbook.get_sample_data('grace_hopper.jpg', asfileobj=False)


@pytest.fixture(scope='module')
def d(tmp_path_factory):
    "A 48×40 photo and a mask for it; tiny runs at 16 px (plain, an ensemble of it, blur, layout) and a super-resolution run."
    d = tmp_path_factory.mktemp('editing')
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / 'photo.png')
    mask = np.zeros((40, 48), np.uint8); mask[12:26, 10:30] = 255
    Image.fromarray(mask).save(d / 'mask.png')
    tiny = ['--model', 'tiny', '--size', '16', '--n-images', '16', '--batch', '4', '--steps', '1']
    for name, extra in (('plain', []), ('blur', ['--degradation', 'blur']), ('layout', ['--condition', 'layout'])):
        code, _, err = run_main('train', *tiny, *extra, '--out', d / name)
        assert code == 0, err
    code, _, err = run_main('train', '--experts', '2', '--from', d / 'plain', '--steps', '2', '--batch', '4', '--out', d / 'ens')
    assert code == 0, err
    (d / 'tiny64.json').write_text(json.dumps({**PRESETS['tiny'], 'attention_resolutions': [16]}))
    code, _, err = run_main('train', '--condition', 'superres', '--model', d / 'tiny64.json', '--size', '64', '--batch', '4',
                            '--n-images', '8', '--steps', '1', '--out', d / 'sr')
    assert code == 0, err
    (d / 'not_a_run').mkdir()
    return d


@pytest.fixture(scope='module')
def base(): return load_run(pretrained_dir())


# ---- inpaint -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('options, calls', [(['--steps', '10', '--jump', '3', '--resamples', '2', '--seed', '4'], 19),
                                            (['--steps', '10', '--resamples', '1', '--seed', '4'], 10),
                                            (['--seed', '4'], 230)])            # the defaults: 50 steps, jumps of 5, 5 passes
def test_inpaint_writes_the_photo_with_its_hole_filled(d, base, tmp_path, options, calls):
    code, out, err = run_main('inpaint', d / 'photo.png', '--mask', d / 'mask.png', *options, '--out', tmp_path / 'o.png')
    assert code == 0, err
    got = pixels(tmp_path / 'o.png')
    photo, hole = load_photo_and_mask(d / 'photo.png', d / 'mask.png', 32)
    keep = ~hole[0, 0].bool().numpy()
    assert got.shape == (32, 32, 3)
    assert np.array_equal(got[keep], load_image(d / 'photo.png', 32).permute(1, 2, 0).numpy()[keep])
    flags = dict(zip(options[::2], map(int, options[1::2])))
    steps, jump, resamples = flags.get('--steps', 50), flags.get('--jump', 5), flags.get('--resamples', 5)
    want, n = inpaint(base.model, base.schedule, base.objective, photo, hole, steps=steps, jump_length=jump, resamples=resamples,
                      generator=torch.Generator().manual_seed(4))
    assert n == calls == network_calls(repaint_schedule(steps, jump, resamples))
    assert np.array_equal(got, as_png(want))
    how = 'the simple method' if resamples == 1 else f'RePaint (jumps of {jump}, {resamples} passes)'
    assert f'with {int(hole.sum())} of 1024 pixels filled by {how}, {calls} network calls, seed 4' in out, out


@pytest.mark.parametrize('run', ['plain', 'ens'])
def test_inpaint_with_a_run_or_an_ensemble_works_at_its_size(d, tmp_path, run):
    code, out, err = run_main('inpaint', d / 'photo.png', '--mask', d / 'mask.png', '--run', d / run, '--steps', '4',
                              '--jump', '2', '--resamples', '2', '--out', tmp_path / 'o.png')
    assert code == 0, err
    model = load_ensemble(d / run) if run == 'ens' else load_run(d / run)
    photo, hole = load_photo_and_mask(d / 'photo.png', d / 'mask.png', 16)
    want, _ = inpaint(model.model, model.schedule, model.objective, photo, hole, steps=4, jump_length=2, resamples=2,
                      generator=torch.Generator().manual_seed(0))
    assert pixels(tmp_path / 'o.png').shape == (16, 16, 3) and np.array_equal(pixels(tmp_path / 'o.png'), as_png(want))


@pytest.mark.parametrize('run, words', [('ATTR', ['conditioned on attributes', 'unconditional noise model']),
                                        ('blur', ['restores blur']), ('layout', ['conditioned on layout']),
                                        ('sr', ['conditioned on superres']), ('not_a_run', ['not a run folder (no config.json)']),
                                        ('missing', ['missing does not exist'])])
@pytest.mark.parametrize('command', ['inpaint', 'edit'])
def test_runs_that_are_not_noise_models_are_refused(d, tmp_path, run, words, command):
    given = pretrained_dir('attributes') if run == 'ATTR' else d / run
    mask = ['--mask', d / 'mask.png'] if command == 'inpaint' else []
    one_line(*run_main(command, d / 'photo.png', *mask, '--run', given, '--steps', '2', '--out', tmp_path / 'o.png')[::2], *words)
    assert not (tmp_path / 'o.png').exists()


# ---- edit ----------------------------------------------------------------------------------------------------------

def test_edit_is_sdedit_with_the_bundled_model(d, base, tmp_path):
    code, out, err = run_main('edit', d / 'photo.png', '--strength', '0.5', '--steps', '10', '--seed', '3',
                              '--out', tmp_path / 'o.png')
    assert code == 0, err
    photo = to_float(load_image(d / 'photo.png', 32))[None]
    want = sdedit(base.model, base.schedule, base.objective, photo, 0.5, steps=10, generator=torch.Generator().manual_seed(3))
    assert pixels(tmp_path / 'o.png').shape == (32, 32, 3) and np.array_equal(pixels(tmp_path / 'o.png'), as_png(want))
    assert 'edited at strength 0.5, SDEdit, seed 3' in out, out


@pytest.mark.parametrize('run', ['plain', 'ens'])
def test_edit_with_a_run_or_an_ensemble(d, tmp_path, run):
    code, _, err = run_main('edit', d / 'photo.png', '--run', d / run, '--steps', '4', '--out', tmp_path / 'o.png')
    assert code == 0 and pixels(tmp_path / 'o.png').shape == (16, 16, 3), err


@pytest.mark.parametrize('guidance', [None, '4'])
def test_edit_attr_inverts_and_asks_the_attribute_model(d, tmp_path, guidance):
    extra = [] if guidance is None else ['--guidance', guidance]
    code, out, err = run_main('edit', d / 'photo.png', '--attr', 'glasses=round', 'mouth=grin', '--strength', '0.6', '--steps', '10',
                              *extra, '--out', tmp_path / 'o.png')
    assert code == 0, err
    attr = load_run(pretrained_dir('attributes'))
    w = DEFAULT_GUIDANCE if guidance is None else float(guidance)
    request = run_schema(attr).parse(['glasses=round', 'mouth=grin'])
    want = edit_attributes(attr, to_float(load_image(d / 'photo.png', 32))[None], request, strength=0.6, guidance=w, steps=10)
    assert np.array_equal(pixels(tmp_path / 'o.png'), as_png(want))
    assert f'asked for glasses=round mouth=grin by DDIM inversion (w = {w:g})' in out, out


@pytest.mark.parametrize('options, words', [
    (['--guidance', '3'], ['--guidance goes with --attr']),
    (['--strength', '0'], ['argument --strength: must be a finite number > 0 and ≤ 1, got']),
    (['--strength', '1.5'], ['argument --strength: must be a finite number > 0 and ≤ 1']),
    (['--strength', 'nan'], ['argument --strength']),
    (['--attr', 'hat=yes'], ["unknown attribute 'hat'", 'glasses']),
    (['--attr', 'glasses=monocle'], ["unknown value 'monocle' for attribute glasses", 'round']),
    (['--attr', 'glasses'], ['must look like name=value']),
    (['--attr', 'glasses=round', 'glasses=none'], ['asked for twice']),
    (['--steps', '1001'], ["--steps 1001 is more than the model's T = 1000"]),
    (['--steps', '1001', '--attr', 'glasses=round'], ["--steps 1001 is more than the model's T = 1000"]),
    (['--steps', '0'], ['argument --steps: must be at least 1']),
    (['--attr', 'glasses=round', '--run', 'PLAIN'], ['not conditioned on attributes']),
])
def test_edit_refuses_in_one_line(d, tmp_path, options, words):
    options = [str(d / 'plain') if o == 'PLAIN' else o for o in options]
    one_line(*run_main('edit', d / 'photo.png', *options, '--out', tmp_path / 'o.png')[::2], *words)
    assert not (tmp_path / 'o.png').exists()


@pytest.mark.parametrize('image, words', [('missing.png', ['missing.png does not exist']),
                                          ('folder', ['is a folder; name one image file']),
                                          ('corrupt.png', ['corrupt.png is not a readable image'])])
@pytest.mark.parametrize('command', ['inpaint', 'edit', 'edit --attr'])
def test_bad_photos_are_refused_in_one_line(d, tmp_path, image, words, command):
    (tmp_path / 'folder').mkdir(); (tmp_path / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n cut short')
    extra = {'inpaint': ['--mask', d / 'mask.png'], 'edit': [], 'edit --attr': ['--attr', 'glasses=round']}[command]
    one_line(*run_main(command.split()[0], tmp_path / image, *extra, '--steps', '2', '--out', tmp_path / 'o.png')[::2], *words)
    assert not (tmp_path / 'o.png').exists()


@pytest.mark.parametrize('options, words', [
    (['--mask', 'MISSING'], ['mask', 'none.png does not exist']),
    (['--mask', 'PHOTO'], ['is not black and white', 'pixels are grey']),
    (['--steps', '1001'], ["--steps 1001 is more than the model's T = 1000"]),
    (['--resamples', '0'], ['argument --resamples: must be at least 1']),
    (['--jump', '1.5'], ['argument --jump: must be a whole number']),
    (['--out', 'o.jpg'], ["argument --out: must name a .png file"]),
])
def test_inpaint_refuses_in_one_line(d, tmp_path, options, words):
    given = {'MISSING': str(tmp_path / 'none.png'), 'PHOTO': str(d / 'photo.png'), 'o.jpg': str(tmp_path / 'o.jpg')}
    options = [given.get(o, o) for o in options]
    mask = [] if '--mask' in options else ['--mask', d / 'mask.png']
    out = [] if '--out' in options else ['--out', tmp_path / 'o.png']
    one_line(*run_main('inpaint', d / 'photo.png', *mask, *options, *out)[::2], *words)
    assert not any(tmp_path.iterdir())


def test_inpaint_needs_a_mask_and_an_out(d, tmp_path):
    one_line(*run_main('inpaint', d / 'photo.png', '--out', tmp_path / 'o.png')[::2], 'the following arguments are required: --mask')
    one_line(*run_main('edit', d / 'photo.png')[::2], 'the following arguments are required: --out')


# ---- a real photo --------------------------------------------------------------------------------------------------

def test_grace_hopper_inpainted_and_edited(tmp_path, base):
    with Image.open(hopper()) as im: w, h = im.size
    mask = np.zeros((h, w), np.uint8); mask[h // 3: h // 2, w // 4: 3 * w // 4] = 255   # a band over the eyes
    Image.fromarray(mask).save(tmp_path / 'eyes.png')
    code, _, err = run_main('inpaint', hopper(), '--mask', tmp_path / 'eyes.png', '--steps', '8', '--jump', '2', '--resamples', '2',
                            '--out', tmp_path / 'filled.png')
    assert code == 0, err
    photo, hole = load_photo_and_mask(hopper(), tmp_path / 'eyes.png', 32)
    keep = ~hole[0, 0].bool().numpy()
    assert 0 < hole.sum() < 1024 and np.array_equal(pixels(tmp_path / 'filled.png')[keep], as_png(photo)[keep])
    for extra in ([], ['--attr', 'glasses=sunglasses']):
        code, _, err = run_main('edit', hopper(), '--strength', '0.4', '--steps', '8', *extra, '--out', tmp_path / 'e.png')
        assert code == 0 and pixels(tmp_path / 'e.png').shape == (32, 32, 3), err
        assert not np.array_equal(pixels(tmp_path / 'e.png'), as_png(photo))


def test_the_commands_on_a_synthetic_face(tmp_path):
    "A synthetic face drawn at 64 px, its eyes masked: inpaint keeps the rest exactly, and edit writes a 32 px face."
    from face_diffusion.data import load_image, synthetic_faces
    from face_diffusion.editing import named_mask
    face = synthetic_faces(1, size=64, seed=1234)[0][0]
    Image.fromarray(face.permute(1, 2, 0).numpy()).save(tmp_path / 'face.png')
    hole = named_mask('eyes', 64)[0, 0].numpy()
    Image.fromarray((hole * 255).astype(np.uint8)).save(tmp_path / 'eyes.png')
    code, out, err = run_main('inpaint', tmp_path / 'face.png', '--mask', tmp_path / 'eyes.png', '--steps', '10', '--out', tmp_path / 'o.png')
    assert code == 0, err
    got, small = pixels(tmp_path / 'o.png'), load_image(tmp_path / 'face.png', 32).permute(1, 2, 0).numpy()
    kept = named_mask('eyes', 32)[0, 0].numpy() == 0                    # 64 → 32 px halves the hole exactly
    assert got.shape == (32, 32, 3) and np.array_equal(got[kept], small[kept]) and not np.array_equal(got[~kept], small[~kept])
    code, _, err = run_main('edit', tmp_path / 'face.png', '--strength', '0.6', '--attr', 'glasses=round', '--steps', '10',
                            '--out', tmp_path / 'e.png')
    assert code == 0 and pixels(tmp_path / 'e.png').shape == (32, 32, 3), err
