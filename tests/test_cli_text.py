"""Captions on the command line (chapter 10a): `train --condition text`, its resume and refusals, and `sample --prompt`.
One tiny text run is made per module; the bundled unconditional and attribute models stand for the other kinds."""
import json, re, shutil

import numpy as np
import pytest
from PIL import Image

from face_diffusion.runs import checkpoints, pretrained_dir, read_config
from face_diffusion.text import P_UNCOND_TEXT, TEXT_LEN, VOCABULARY
from one_line import one_line, pixels, run_main

TRAIN = ['train', '--condition', 'text', '--model', 'tiny', '--size', '32', '--n-images', '64', '--batch', '4']


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    "Image folders decoded here are cached under the test's own folder, never in the user's cache."
    monkeypatch.setenv('FACE_DIFFUSION_CACHE', str(tmp_path / 'cache'))


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A tiny text run of 4 steps."
    out = tmp_path_factory.mktemp('text') / 'run'
    code, stdout, err = run_main(*TRAIN, '--steps', '4', '--sample-every', '4', '--out', out)
    assert code == 0, err
    assert 'trained to step 4' in stdout
    return out


def sample(run_dir, out, *args):
    "`face-diffusion sample` of 2 faces in 2 steps; (exit status, stdout, stderr without tqdm's bars)."
    code, stdout, err = run_main('sample', '--run', run_dir, '--n', '2', '--steps', '2', '--out', out, *args)
    return code, stdout, '\n'.join(l for l in err.splitlines() if not re.search(r'\d+%\|', l) and l.strip())


def warnings_in(err): return [l for l in err.splitlines() if l.startswith('face-diffusion: warning:')]


# --- train ---

def test_train_condition_text_records_captions(run):
    cfg = read_config(run)
    assert cfg['condition']['kind'] == 'text' and cfg['condition']['vocabulary'] == VOCABULARY
    assert cfg['condition']['p_uncond'] == P_UNCOND_TEXT and cfg['condition']['labels'] == {'kind': 'synthetic'}
    assert cfg['condition']['count'] == 64 and cfg['condition']['length'] == TEXT_LEN
    assert cfg['unet']['cond_text_vocab'] == len(VOCABULARY) and cfg['unet']['base_channels'] == 8   # the tiny preset
    assert [p.name for p in checkpoints(run)][-1] == 'step_000004'


def test_p_uncond_goes_with_text(tmp_path):
    code, _, err = run_main(*TRAIN, '--steps', '1', '--sample-every', '2', '--p-uncond', '0.05', '--out', tmp_path / 'r')
    assert code == 0, err
    assert read_config(tmp_path / 'r')['condition']['p_uncond'] == 0.05


def test_resume_continues_a_text_run(run, tmp_path):
    copy = tmp_path / 'run'
    shutil.copytree(run, copy)
    code, _, err = run_main('train', '--out', copy, '--resume', '--steps', '2')
    assert code == 0, err
    assert [p.name for p in checkpoints(copy)][-1] == 'step_000006'
    assert read_config(copy)['condition'] == read_config(run)['condition']
    for option in (['--condition', 'attributes'], ['--p-uncond', '0.3']):
        code, _, err = run_main('train', '--out', copy, '--resume', *option, '--steps', '1')
        one_line(code, err, option[0], 'contradicts')
    assert [p.name for p in checkpoints(copy)][-1] == 'step_000006'


def photo_folder(root):
    root.mkdir()
    for i in range(3): Image.fromarray(np.full((40, 40, 3), 40 * i, np.uint8)).save(root / f'{i}.png')
    return root


@pytest.mark.parametrize('option, words', [
    (['--p-group', '0.1'], ['--p-group', '--condition attributes']),
    (['--attributes-file', 'list_attr_celeba.txt'], ['--attributes-file', '--condition attributes']),
    (['--data', 'PHOTOS'], ['synthetic', '--condition text']),
])
def test_train_text_refuses_what_captions_cannot_use(tmp_path, option, words):
    option = [str(photo_folder(tmp_path / 'photos')) if o == 'PHOTOS' else o for o in option]
    code, _, err = run_main(*TRAIN, '--steps', '1', *option, '--out', tmp_path / 'r')
    one_line(code, err, *words)
    assert not (tmp_path / 'r').exists()


# --- sample --prompt ---

def test_sample_prompt_writes_a_png(run, tmp_path, monkeypatch):
    import face_diffusion.cli as cli
    asked, sample_prompt = [], cli.sample_prompt
    monkeypatch.setattr(cli, 'sample_prompt', lambda run, n, prompt, w, *a, **kw: asked.append((n, prompt, w)) or
                        sample_prompt(run, n, prompt, w, *a, **kw))                 # what the model is asked, then asked
    out = tmp_path / 'o.png'
    code, stdout, err = sample(run, out, '--prompt', 'a bald man with sunglasses')
    assert code == 0 and err == '', err
    assert "'a bald man with sunglasses'" in stdout and 'w = 3.0' in stdout
    assert pixels(out).shape == (2 + 34, 2 + 2 * 34, 3)                        # 2 faces of 32 px in a row
    code, _, _ = sample(run, tmp_path / 'again.png', '--prompt', 'a bald man with sunglasses', '--guidance', '5')
    assert code == 0 and asked == [(2, 'a bald man with sunglasses', 3.0), (2, 'a bald man with sunglasses', 5.0)]
    code, _, _ = sample(run, tmp_path / 'again.png', '--prompt', 'a bald man with sunglasses')
    assert code == 0 and np.array_equal(pixels(tmp_path / 'again.png'), pixels(out))   # seed 0 both times


def test_an_unknown_word_is_named_once_and_left_out(run, tmp_path):
    code, _, err = sample(run, tmp_path / 'zebra.png', '--prompt', 'a happy zebra with sunglasses')
    assert code == 0, err
    said = warnings_in(err)
    assert len(said) == 1 and said == err.splitlines(), err                      # one line, and nothing else
    assert said[0].count('happy') == 1 and said[0].count('zebra') == 1 and 'sunglasses' not in said[0]
    code, _, err = sample(run, tmp_path / 'known.png', '--prompt', 'a with sunglasses')
    assert code == 0 and err == ''
    assert np.array_equal(pixels(tmp_path / 'zebra.png'), pixels(tmp_path / 'known.png'))   # as if never written


def test_the_empty_prompt_samples_the_null_caption(run, tmp_path):
    code, stdout, err = sample(run, tmp_path / 'empty.png', '--prompt', '')
    assert code == 0 and err == '', err
    assert 'the empty prompt' in stdout
    empty = pixels(tmp_path / 'empty.png')
    for name, args in (('w7', ['--prompt', '', '--guidance', '7']),             # nothing asked: w changes nothing
                       ('none', []),                                             # no --prompt: the empty one
                       ('unknown', ['--prompt', 'zebra'])):                      # nothing known asked
        code, _, err = sample(run, tmp_path / f'{name}.png', *args)
        assert code == 0 and len(warnings_in(err)) == (name == 'unknown'), err
        assert np.array_equal(pixels(tmp_path / f'{name}.png'), empty), name


@pytest.mark.parametrize('kind, words', [('unconditional', ['unconditional']), ('attributes', ['conditioned on attributes'])])
def test_prompt_with_another_kind_of_model_is_refused(tmp_path, kind, words):
    code, _, err = sample(pretrained_dir(kind), tmp_path / 'o.png', '--prompt', 'a face')
    one_line(code, err, '--prompt', 'captions', *words)
    assert not (tmp_path / 'o.png').exists()


def test_attr_with_a_text_model_is_refused(run, tmp_path):
    code, _, err = sample(run, tmp_path / 'o.png', '--attr', 'glasses=round')
    one_line(code, err, 'reads captions', '--prompt', '--attr')
    assert not (tmp_path / 'o.png').exists()


@pytest.mark.parametrize('where', ['bundled', 'run'])
def test_prompt_and_attr_together_are_refused(run, tmp_path, where):
    args = ['--run', run] if where == 'run' else []
    code, _, err = run_main('sample', *args, '--prompt', 'a face', '--attr', 'glasses=round', '--out', tmp_path / 'o.png')
    one_line(code, err, '--prompt', '--attr', 'give one')
    assert not (tmp_path / 'o.png').exists()


def test_prompt_with_an_ensemble_is_refused(tmp_path):
    ensemble = tmp_path / 'experts'
    ensemble.mkdir()
    (ensemble / 'ensemble.json').write_text(json.dumps({}))
    code, _, err = sample(ensemble, tmp_path / 'o.png', '--prompt', 'a face')
    one_line(code, err, '--prompt')
