"""The ensemble of experts on the command line (chapter 13): `train --experts N --from RUN`, `train --out ENSEMBLE
--resume` and `sample --run ENSEMBLE [--keep disk]`. One tiny ensemble is made once per module from the bundled model."""
import json, re, shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from face_diffusion.cli import EXPERT_REFUSED, main
from face_diffusion.data import image_grid
from face_diffusion.experts import load_ensemble, read_ensemble
from face_diffusion.runs import checkpoints, pretrained_dir
from face_diffusion.sampling import sample_run
from face_diffusion.training import Trainer
from one_line import one_line, pixels, run_main

TINY = ['--steps', '4', '--batch', '4']          # 2 optimizer steps for each of 2 experts




def same_weights(a, b) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope='module', autouse=True)
def faces_drawn_once():
    "The bundled model's 20,000 synthetic faces, drawn once for the module (each command would draw them again)."
    import face_diffusion.runs as runs
    drawn, draw = {}, runs.synthetic_faces
    def once(n, size=32, seed=0):
        if (n, size, seed) not in drawn: drawn[n, size, seed] = draw(n, size=size, seed=seed)
        return drawn[n, size, seed]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(runs, 'synthetic_faces', once)
        yield


@pytest.fixture(scope='module')
def ensemble(tmp_path_factory):
    "2 experts split from the bundled model: 2 steps of batch 4 each (without sample grids: see `no_grids`)."
    d = tmp_path_factory.mktemp('experts') / 'ens'
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Trainer, 'sample_grid', lambda self: None)
        code, out, err = run_main('train', '--experts', '2', '--from', 'bundled', *TINY, '--out', d)
    assert code == 0, err
    return d, out


@pytest.fixture
def no_grids(monkeypatch):
    "Training without its sample grids (they take most of a tiny run's time and never touch the weights)."
    monkeypatch.setattr(Trainer, 'sample_grid', lambda self: None)


def test_train_experts_writes_the_ensemble_and_says_how_to_sample_it(ensemble):
    d, out = ensemble
    info = read_ensemble(d)
    assert info['experts'] == [{'folder': 't0000-0500', 'timesteps': [0, 500]}, {'folder': 't0500-1000', 'timesteps': [500, 1000]}]
    assert info['base']['from'] == str(pretrained_dir().resolve()) and info['steps'] == 4
    assert info['train'] == {'lr': 2e-4, 'warmup_steps': 50, 'batch_size': 4, 'precision': 'bf16'}   # precision: the base's
    for node in info['tree']:
        assert node['steps'] == 2 and [p.name for p in checkpoints(d / node['folder'])][-1] == 'step_000002'
    lines = out.strip().splitlines()
    assert lines[0].startswith('splitting the bundled model into 2 experts') and 'resume with `face-diffusion train --out' in lines[0]
    assert lines[-2].startswith('trained an ensemble of 2 experts: ') and '(t0000-0500, t0500-1000)' in lines[-2]
    assert lines[-1] == f'sample it with: face-diffusion sample --run {d}'


def test_options_reach_train_experts(tmp_path, monkeypatch):
    "--lr, --batch, --precision and --seed are recorded as given; --experts 1 is one expert on all timesteps."
    monkeypatch.setattr(Trainer, 'fit', lambda self: self.save_checkpoint())   # weights for the next level to start from
    code, _, err = run_main('train', '--experts', '4', '--from', 'bundled', '--steps', '16', '--lr', '1e-4', '--batch', '2',
                            '--precision', 'fp32', '--seed', '7', '--device', 'cpu', '--out', tmp_path / 'e4')
    assert code == 0, err
    info = read_ensemble(tmp_path / 'e4')
    assert info['train'] == {'lr': 1e-4, 'warmup_steps': 50, 'batch_size': 2, 'precision': 'fp32'}
    assert [n['timesteps'] for n in info['experts']] == [[0, 250], [250, 500], [500, 750], [750, 1000]]
    assert [(n['steps'], n['seed']) for n in info['tree']] == [(4, 8), (4, 9), (2, 10), (2, 11), (2, 12), (2, 13)]
    code, _, err = run_main('train', '--experts', '1', '--from', 'bundled', '--steps', '3', '--out', tmp_path / 'e1')
    assert code == 0, err
    info = read_ensemble(tmp_path / 'e1')
    assert info['experts'] == [{'folder': 't0000-1000', 'timesteps': [0, 1000]}] and info['tree'][0]['steps'] == 3
    assert info['train']['lr'] == 2e-4 and info['train']['batch_size'] == 64      # the fine-tuning rate, the base's batch


def test_from_a_run_folder(ensemble, tmp_path, monkeypatch):
    "--from takes a run folder (here the ensemble's own copy of its base)."
    monkeypatch.setattr(Trainer, 'fit', lambda self: self)
    d, _ = ensemble
    code, _, err = run_main('train', '--experts', '2', '--from', d / 'base', '--steps', '2', '--out', tmp_path / 'e')
    assert code == 0, err
    assert read_ensemble(tmp_path / 'e')['base']['from'] == str((d / 'base').resolve())


def test_sample_the_ensemble(ensemble, tmp_path):
    "sample --run ENSEMBLE: 32 px faces, exactly load_ensemble's; --keep disk gives the same image, loading each expert."
    d, _ = ensemble
    code, out, err = run_main('sample', '--run', d, '--n', '4', '--steps', '6', '--seed', '3', '--out', tmp_path / 'm.png',
                              '--gif', tmp_path / 'm.gif')
    assert code == 0, err
    assert re.search(r'wrote 4 samples \(dpm\+\+, 6 steps, \d+\.\d s; an ensemble of 2 experts\) to ', out), out
    assert pixels(tmp_path / 'm.png').shape == (2 + 2 * 34, 2 + 2 * 34, 3)          # 2×2 faces of 32 px
    want = sample_run(load_ensemble(d), 4, 'dpm++', steps=6, seed=3)
    assert np.array_equal(pixels(tmp_path / 'm.png'), image_grid(want))
    assert Image.open(tmp_path / 'm.gif').n_frames > 1
    code, out, err = run_main('sample', '--run', d, '--n', '4', '--steps', '6', '--seed', '3', '--keep', 'disk',
                              '--out', tmp_path / 'd.png')
    assert code == 0, err
    assert 'an ensemble of 2 experts, one at a time: 2 loads' in out, out
    assert np.array_equal(pixels(tmp_path / 'd.png'), pixels(tmp_path / 'm.png'))
    code, _, err = run_main('sample', '--run', d, '--n', '4', '--steps', '6', '--seed', '3', '--size', '32', '--sampler', 'ddim',
                            '--out', tmp_path / 'i.png')                            # its own size: accepted
    assert code == 0, err
    assert np.array_equal(pixels(tmp_path / 'i.png'), image_grid(sample_run(load_ensemble(d), 4, 'ddim', steps=6, seed=3)))


def test_resume_trains_a_missing_expert(ensemble, tmp_path, no_grids):
    "An ensemble whose last expert is gone: `--out ENSEMBLE --resume` trains it again, bit for bit, and keeps the first."
    d = tmp_path / 'ens'
    shutil.copytree(ensemble[0], d)
    shutil.rmtree(d / 't0500-1000')
    first = (d / 't0000-0500' / 'ema.safetensors').stat().st_mtime_ns
    code, out, err = run_main('train', '--out', d, '--resume')
    assert code == 0, err
    assert out.strip().splitlines()[-1] == f'sample it with: face-diffusion sample --run {d}'
    assert (d / 't0000-0500' / 'ema.safetensors').stat().st_mtime_ns == first
    for name in ('model.safetensors', 'ema.safetensors'):
        assert same_weights(d / 't0500-1000' / name, ensemble[0] / 't0500-1000' / name), name


def test_ctrl_c_prints_the_resume_command_that_finishes_the_ensemble(ensemble, tmp_path, monkeypatch, no_grids):
    "Ctrl-C in the second expert's second step: a checkpoint, the hint; the hint alone finishes the ensemble exactly."
    calls, step = [], Trainer.train_step
    def interrupted(self):
        calls.append(self.run_dir.name)
        if len(calls) == 4: raise KeyboardInterrupt
        return step(self)
    monkeypatch.setattr(Trainer, 'train_step', interrupted)
    d = tmp_path / 'ens'
    code, out, err = run_main('train', '--experts', '2', '--from', 'bundled', *TINY, '--out', d)
    assert code == 130 and calls == ['t0000-0500'] * 2 + ['t0500-1000'] * 2, (code, calls, err)
    hint = out.strip().splitlines()[-1]
    assert hint == f'stopped; resume with: face-diffusion train --out {d} --resume', out
    assert [p.name for p in checkpoints(d / 't0500-1000')] == ['step_000001']
    code, out, err = run_main(*hint.split('resume with: face-diffusion ')[1].split())
    assert code == 0, err
    for node in ('t0000-0500', 't0500-1000'):
        for name in ('model.safetensors', 'ema.safetensors'):
            assert same_weights(d / node / name, ensemble[0] / node / name), (node, name)


def test_ctrl_c_before_the_ensemble_is_recorded_is_a_plain_interrupt(tmp_path, monkeypatch):
    import face_diffusion.experts as experts
    def interrupted(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(experts, '_copy_base', interrupted)
    code, out, err = run_main('train', '--experts', '2', '--from', 'bundled', *TINY, '--out', tmp_path / 'e')
    assert code == 130 and err.strip() == 'face-diffusion: interrupted' and 'stopped' not in out, out


def test_a_finished_ensemble_resumes_to_nothing(ensemble, tmp_path):
    d = tmp_path / 'ens'
    shutil.copytree(ensemble[0], d)
    before = {p: p.read_bytes() for p in d.rglob('*') if p.is_file()}
    code, out, err = run_main('train', '--out', d, '--resume', '--device', 'cpu')
    assert code == 0 and 'trained an ensemble of 2 experts' in out, err
    assert {p: p.read_bytes() for p in d.rglob('*') if p.is_file()} == before


OPTION_VALUES = {'--data': 'synthetic', '--model': 'tiny', '--size': '64', '--n-images': '8', '--crop': 'center',
                 '--objective': 'eps', '--schedule': 'linear', '--T': '100', '--min-snr': '5', '--condition': 'attributes',
                 '--degradation': 'blur', '--attributes-file': 'list_attr_celeba.txt', '--p-uncond': '0.1',
                 '--p-group': '0.1', '--max-level': '0.2', '--epochs': '1', '--sample-every': '1', '--save-every': '1',
                 '--emphasis': '0.5,0.28,0.75,0.72,8'}


def test_every_refused_option_has_a_value_here():
    assert set(OPTION_VALUES) == set(EXPERT_REFUSED)


@pytest.mark.parametrize('flag', list(OPTION_VALUES))
def test_train_experts_refuses_options_that_do_not_apply(flag, tmp_path):
    code, _, err = run_main('train', '--experts', '2', '--from', 'bundled', flag, OPTION_VALUES[flag], *TINY, '--out', tmp_path / 'e')
    one_line(code, err, f'error: {flag} ', f'drop {flag}')
    assert not (tmp_path / 'e').exists()


def test_options_that_come_from_the_base_say_so(tmp_path):
    code, _, err = run_main('train', '--experts', '2', '--from', 'bundled', '--size', '64', *TINY, '--out', tmp_path / 'e')
    one_line(code, err, '--size comes from the base run (--from)')


@pytest.mark.parametrize('args, words', [
    (['--experts', '2'], ['--experts needs --from RUN']),
    (['--from', 'bundled'], ['--from goes with --experts N']),
    (['--experts', '3', '--from', 'bundled'], ['argument --experts: must be a power of two (1, 2, 4, 8 …), got 3']),
    (['--experts', '0', '--from', 'bundled'], ['argument --experts: must be at least 1, got 0']),
    (['--experts', 'two', '--from', 'bundled'], ["argument --experts: must be a whole number, got 'two'"]),
    (['--experts', '4', '--from', 'bundled', '--steps', '3'], ['3 steps cannot be shared by 6 expert trainings', 'give at least']),
    (['--experts', '2', '--from', 'bundled', '--resume'], ['--experts and --from start a new ensemble', '--resume` alone']),
    (['--experts', '2', '--from', 'bundled', '--device', 'quantum'], ["unknown device 'quantum'"]),
    (['--experts', '2', '--from', 'bundled', '--lr', '0'], ['argument --lr: must be a finite number > 0']),
])
def test_train_experts_refusals(args, words, tmp_path):
    tiny = [] if '--steps' in args else TINY                            # (a refusal that broke would train for long)
    code, _, err = run_main('train', *args, *tiny, '--out', tmp_path / 'e')
    one_line(code, err, *words)
    assert not (tmp_path / 'e').exists()


@pytest.mark.parametrize('option', [['--steps', '5'], ['--lr', '1e-4'], ['--batch', '8'], ['--precision', 'fp32'],
                                    ['--seed', '1'], ['--size', '32'], ['--model', 'tiny'], ['--epochs', '1']])
def test_resume_of_an_ensemble_refuses_other_options(ensemble, option):
    d = ensemble[0]
    before = {p: p.stat().st_mtime_ns for p in d.rglob('*')}
    code, _, err = run_main('train', '--out', d, '--resume', *option)
    one_line(code, err, f'{option[0]} with --resume', 'only --device may be given')
    assert {p: p.stat().st_mtime_ns for p in d.rglob('*')} == before


def test_an_ensemble_is_not_trained_over_as_a_run(ensemble):
    code, _, err = run_main('train', '--out', ensemble[0], '--overwrite', '--steps', '1')
    one_line(code, err, 'holds an ensemble of experts', 'pass --resume')


@pytest.mark.parametrize('option, words', [
    (['--attr', 'glasses=round'], ['--attr: the experts of', 'are unconditional']),
    (['--guidance', '3'], ['--guidance: the experts of', 'are unconditional']),
    (['--guidance-rescale', '0.5'], ['--guidance-rescale: the experts of']),
    (['--size', '64'], ['--size: the experts of', 'make 32 px faces']),
    (['--sr-run', 'SR'], ['--sr-run: the experts of', 'make 32 px faces']),
    (['--aug-level', '0.2'], ['--aug-level: the experts of']),
    (['--sr-steps', '2'], ['--sr-steps: the experts of']),
    (['--steps', '5000'], ["--steps 5000 is more than the model's T = 1000"]),
    (['--keep', 'cloud'], ["argument --keep: invalid choice: 'cloud'"]),
])
def test_sample_ensemble_refusals(ensemble, tmp_path, option, words):
    option = [str(pretrained_dir('superres')) if o == 'SR' else o for o in option]
    code, _, err = run_main('sample', '--run', ensemble[0], '--n', '2', *option, '--out', tmp_path / 's.png')
    one_line(code, err, *words)
    assert not (tmp_path / 's.png').exists()


def test_keep_with_a_single_model_is_refused(ensemble, tmp_path):
    for run in ([], ['--run', ensemble[0] / 'base']):
        code, _, err = run_main('sample', *run, '--keep', 'disk', '--n', '2', '--out', tmp_path / 's.png')
        one_line(code, err, '--keep is for an ensemble of experts', 'drop --keep')
    assert not (tmp_path / 's.png').exists()


def test_sampling_one_expert_alone_is_refused(ensemble, tmp_path):
    d = ensemble[0]
    code, _, err = run_main('sample', '--run', d / 't0500-1000', '--n', '2', '--out', tmp_path / 's.png')
    one_line(code, err, 'is one expert', 'timesteps 500 … 999 only', f'--run {d}')


def test_help_names_the_expert_options(capsys):
    for name, options in [('train', ['--experts', '--from', 'bundled', 'chapter 13']), ('sample', ['--keep', 'memory', 'disk', 'ensemble'])]:
        with pytest.raises(SystemExit) as e: main([name, '--help'])
        out = capsys.readouterr().out
        assert e.value.code == 0 and all(o in out for o in options), (name, out)
