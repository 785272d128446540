"""The cascade on the command line (chapter 12): `train --condition superres`, `sample --size`, `upscale`.
Tiny runs made once per module: a super-resolution run (32 → 64 px) and base runs at 32 and 16 px."""
import contextlib, io, json, re, shutil

import numpy as np
import pytest
import torch
from PIL import Image

from face_diffusion.cascade import SuperResCondition, cascade_sample, load_small_face, superres_unet, upscale
from one_line import one_line, pixels, run_main
from face_diffusion.cli import main
from face_diffusion.data import image_grid, synthetic_faces
from face_diffusion.runs import DataSource, checkpoints, load_run
from face_diffusion.training import Trainer, TrainConfig
from face_diffusion.unet import PRESETS, UNetConfig




@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "A tiny super-resolution run (max level 0.25, checkpoints at steps 1 and 2), tiny base runs at 32 and 16 px, a photo."
    d = tmp_path_factory.mktemp('cascade')
    model = d / 'tiny64.json'                          # 'tiny' has attention at 8 px only, a side it lacks at 64 px
    model.write_text(json.dumps({**PRESETS['tiny'], 'attention_resolutions': [16]}))
    code, _, err = run_main('train', '--condition', 'superres', '--model', model, '--size', '64', '--n-images', '64',
                            '--batch', '8', '--steps', '2', '--save-every', '1', '--sample-every', '2', '--max-level', '0.25',
                            '--out', d / 'sr')
    assert code == 0, err
    for size in (32, 16):
        code, _, err = run_main('train', '--model', 'tiny', '--size', size, '--n-images', '64', '--batch', '8', '--steps', '2',
                                '--out', d / f'base{size}')
        assert code == 0, err
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(d / 'photo.jpg')
    return d


def test_train_superres_records_its_condition_and_inputs(runs):
    cfg = json.loads((runs / 'sr' / 'config.json').read_text())
    assert cfg['condition'] == {'kind': 'superres', 'low_size': 32, 'max_level': 0.25}
    assert cfg['image_size'] == 64 and cfg['unet']['cond_image_channels'] == 3 and cfg['unet']['cond_levels'] is True
    assert load_run(runs / 'sr').config['condition']['kind'] == 'superres'


def test_resume_continues_a_superres_run(runs, tmp_path):
    run = tmp_path / 'sr'
    shutil.copytree(runs / 'sr', run)
    shutil.rmtree(run / 'checkpoints' / 'step_000002')                    # as if stopped after step 1
    code, out, err = run_main('train', '--out', run, '--resume', '--steps', '1')
    assert code == 0, err
    assert [p.name for p in checkpoints(run)][-1] == 'step_000002'
    assert json.loads((run / 'config.json').read_text())['condition'] == {'kind': 'superres', 'low_size': 32, 'max_level': 0.25}


@pytest.mark.parametrize('option, words', [
    (['--condition', 'layout'], '--condition layout contradicts'),
    (['--condition', 'attributes'], '--condition attributes contradicts'),
    (['--max-level', '0.5'], '--max-level 0.5 contradicts'),
    (['--max-level', '0'], '--max-level 0.0 contradicts'),
    (['--condition', 'superres', '--max-level', '0.25'], None),            # what the run has: accepted
])
def test_resume_refuses_a_contradicting_condition_or_level(runs, tmp_path, option, words):
    run = tmp_path / 'sr'
    shutil.copytree(runs / 'sr', run)
    before = {p: p.read_bytes() for p in run.rglob('*') if p.is_file()}
    code, _, err = run_main('train', '--out', run, '--resume', '--steps', '1', *option)
    if words is None:
        assert code == 0, err
        assert [p.name for p in checkpoints(run)][-1] == 'step_000003'
        return
    one_line(code, err, words, 'superres' if 'condition' in words else 'max_level = 0.25')
    assert {p: p.read_bytes() for p in run.rglob('*') if p.is_file()} == before


def test_max_level_on_a_run_without_one_is_a_conflict(runs, tmp_path):
    shutil.copytree(runs / 'base32', tmp_path / 'b')
    one_line(*run_main('train', '--out', tmp_path / 'b', '--resume', '--max-level', '0.3')[::2], '--max-level 0.3 contradicts')


@pytest.mark.parametrize('level', [None, '0.3'])
def test_sample_size_upscales_the_base_models_faces(runs, tmp_path, level):
    "sample --size 64: the base run's faces, each upscaled: exactly cascade_sample's, the GIF that of the base stage."
    extra = [] if level is None else ['--aug-level', level]
    code, out, err = run_main('sample', '--run', runs / 'base32', '--sr-run', runs / 'sr', '--size', '64', '--n', '4',
                              '--steps', '3', '--sr-steps', '2', '--seed', '5', *extra, '--out', tmp_path / 'a.png',
                              '--gif', tmp_path / 'a.gif')
    assert code == 0, err
    assert re.search(r'\d+\.\d s; upscaled 32 → 64 px by .*sr \(2 dpm\+\+ steps, level [\d.]+, \d+\.\d s\)', out), out
    base, sr = load_run(runs / 'base32'), load_run(runs / 'sr')
    kw = {} if level is None else {'level': float(level)}
    large, small = cascade_sample(base, sr, 4, seed=5, base_steps=3, sr_steps=2, **kw)
    assert pixels(tmp_path / 'a.png').shape == (2 + 2 * 66, 2 + 2 * 66, 3)
    assert np.array_equal(pixels(tmp_path / 'a.png'), image_grid(large))
    code, _, err = run_main('sample', '--run', runs / 'base32', '--n', '4', '--steps', '3', '--seed', '5',
                            '--out', tmp_path / 'b.png', '--gif', tmp_path / 'b.gif')   # the base model alone
    assert code == 0, err
    assert np.array_equal(pixels(tmp_path / 'b.png'), image_grid(small))
    assert (tmp_path / 'a.gif').read_bytes() == (tmp_path / 'b.gif').read_bytes()


def test_sample_attr_upscales_the_bundled_attribute_models_faces(runs, tmp_path):
    "sample --attr --size 64: chapter 10's bundled attribute model asked for attributes, its faces upscaled."
    from face_diffusion.cascade import upscale_samples
    from face_diffusion.conditioning import DEFAULT_GUIDANCE, run_schema, sample_attributes
    from face_diffusion.runs import pretrained_dir
    code, out, err = run_main('sample', '--attr', 'glasses=round', '--sr-run', runs / 'sr', '--size', '64', '--n', '2',
                              '--steps', '2', '--sr-steps', '1', '--seed', '1', '--out', tmp_path / 's.png')
    assert code == 0, err
    assert 'glasses' in out and 'upscaled 32 → 64 px' in out, out
    base = load_run(pretrained_dir('attributes'))
    small = sample_attributes(base, 2, run_schema(base).parse(['glasses=round']), DEFAULT_GUIDANCE, 0.0, steps=2, seed=1)
    want = upscale_samples(load_run(runs / 'sr'), small, seed=1, steps=1)       # cascade_sample's second stage
    assert np.array_equal(pixels(tmp_path / 's.png'), image_grid(want))


def test_sample_at_the_models_own_size_does_not_upscale(runs, tmp_path):
    for name, extra in (('a', []), ('b', ['--size', '32'])):
        code, out, err = run_main('sample', '--run', runs / 'base32', '--n', '4', '--steps', '3', *extra, '--out', tmp_path / f'{name}.png')
        assert code == 0 and 'upscaled' not in out, err
    assert np.array_equal(pixels(tmp_path / 'a.png'), pixels(tmp_path / 'b.png'))
    assert pixels(tmp_path / 'a.png').shape == (2 + 2 * 34, 2 + 2 * 34, 3)


@pytest.mark.parametrize('base, args, words', [
    ('base32', ['--size', '48'], ['--size 48', 'upscales 32 → 64 px', 'use --size 64']),
    ('base32', ['--size', '16'], ['--size 16', 'use --size 64']),
    ('base32', ['--size', '128'], ['--size 128', 'use --size 64']),
    ('base16', ['--size', '64'], ['makes 16 px faces', 'upscales 32 px ones', 'sample a 32 px model']),
    ('base16', ['--size', '32'], ['makes 16 px faces', 'sample a 32 px model']),
    ('base32', ['--size', '64', '--sr-steps', '5000'], ["--sr-steps 5000 is more than the super-resolution model's T = 1000"]),
])
def test_sample_size_that_does_not_fit_names_what_does(runs, tmp_path, base, args, words):
    code, _, err = run_main('sample', '--run', runs / base, '--sr-run', runs / 'sr', '--n', '2', *args, '--out', tmp_path / 's.png')
    one_line(code, err, *words)
    assert not (tmp_path / 's.png').exists()


def test_upscale_writes_one_face_at_the_models_size(runs, tmp_path):
    outs = {}
    for name, seed in (('a', 3), ('b', 3), ('c', 4)):
        out = tmp_path / 'new' / f'{name}.png'
        code, said, err = run_main('upscale', runs / 'photo.jpg', '--run', runs / 'sr', '--steps', '2', '--seed', seed, '--out', out)
        assert code == 0, err
        assert len(said.strip().splitlines()) == 1 and str(out) in said and '32 → 64 px' in said, said
        outs[name] = pixels(out)
    assert Image.open(tmp_path / 'new' / 'a.png').size == (64, 64) and outs['a'].shape == (64, 64, 3)
    assert np.array_equal(outs['a'], outs['b']) and not np.array_equal(outs['a'], outs['c'])   # the seed, and only it
    want = upscale(load_run(runs / 'sr'), load_small_face(runs / 'photo.jpg')[None], 0.1, seed=3, steps=2)
    assert np.array_equal(outs['a'], image_grid(want, pad=0))


def test_upscale_level_is_used(runs, tmp_path):
    for name, level in (('a', '0'), ('b', '0.6')):
        code, _, err = run_main('upscale', runs / 'photo.jpg', '--run', runs / 'sr', '--steps', '2', '--level', level,
                                '--out', tmp_path / f'{name}.png')
        assert code == 0, err
    want = upscale(load_run(runs / 'sr'), load_small_face(runs / 'photo.jpg')[None], 0.6, seed=0, steps=2)
    assert np.array_equal(pixels(tmp_path / 'b.png'), image_grid(want, pad=0))
    assert not np.array_equal(pixels(tmp_path / 'a.png'), pixels(tmp_path / 'b.png'))


def test_the_bundled_models_command_writes_the_python_recipes_config(tmp_path, monkeypatch):
    """The command of face_diffusion/pretrained_superres/MADE_WITH.md and the Python recipe it was trained with write
    the same config.json. Neither trains (fit is skipped) and both draw 8 faces instead of 20,000 (recorded as such)."""
    import face_diffusion.runs as runs_module
    few = {}
    def eight_faces(n, size, seed):
        if (size, seed) not in few: few[size, seed] = synthetic_faces(8, size=size, seed=seed)
        return few[size, seed]
    monkeypatch.setattr(runs_module, 'synthetic_faces', eight_faces)
    monkeypatch.setattr(Trainer, 'fit', lambda self: self)
    code, _, err = run_main(*('train --data synthetic --n-images 20000 --size 64 --model sr64 --condition superres --steps 4000 '
                              '--batch 32 --lr 1e-3 --objective v --schedule cosine --min-snr 5 --precision bf16 --seed 0 '
                              '--device cpu').split(), '--out', tmp_path / 'cli')
    assert code == 0, err
    Trainer(UNetConfig.preset('cpu32', image_size=64, channel_mults=(1, 2, 2, 4), cond_image_channels=3, cond_levels=True),
            TrainConfig(objective='v', schedule='cosine', T=1000, min_snr_gamma=5.0, lr=1e-3, batch_size=32, steps=4000,
                        warmup_steps=200, precision='bf16', sample_every=400, save_every=400, log_every=50, seed=0),
            DataSource('synthetic', 64, n=20000, seed=0), tmp_path / 'py', device='cpu', condition=SuperResCondition(32, 0.5))
    for name in ('config.json', 'scheduler_config.json'):
        assert json.loads((tmp_path / 'cli' / name).read_text()) == json.loads((tmp_path / 'py' / name).read_text()), name
    cfg = json.loads((tmp_path / 'cli' / 'config.json').read_text())
    assert cfg['data']['n'] == 20000 and cfg['data']['count'] == 8                   # the patch took


def test_superres_defaults_to_the_sr64_model_at_64_px(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, 'fit', lambda self: self)
    code, _, err = run_main('train', '--condition', 'superres', '--n-images', '8', '--steps', '1', '--device', 'cpu',
                            '--out', tmp_path / 'r')
    assert code == 0, err
    cfg = json.loads((tmp_path / 'r' / 'config.json').read_text())
    assert UNetConfig.from_dict(cfg['unet']) == superres_unet('sr64', 64) and cfg['data']['size'] == 64
    assert cfg['condition'] == {'kind': 'superres', 'low_size': 32, 'max_level': 0.5}


def test_help_names_the_cascade_options(capsys):
    for name, options in [('train', ['superres', '--max-level']), ('sample', ['--size', '--sr-run', '--aug-level', '--sr-steps']),
                          ('upscale', ['IMG', '--out', '--run', '--level', '--steps', '--seed'])]:
        with pytest.raises(SystemExit) as e: main([name, '--help'])
        out = capsys.readouterr().out
        assert e.value.code == 0 and f'face-diffusion {name}' in out and all(o in out for o in options), (name, out)
