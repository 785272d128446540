"""A catalogue of hostile inputs and what each gets.

Each test is one case a careless or unlucky user meets: the command (or Python call), and what it must do now —
a one-line error or warning naming what to fix, a run that carries on safely, and nothing of the user's lost.
The commands run in-process through `main`, on tiny models and data, so the catalogue stays fast on a busy machine."""
import contextlib, io, json, os, re, shutil, signal, socket, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from safetensors.torch import load_file

from face_diffusion.cli import main
from face_diffusion.runs import checkpoints, load_run
from face_diffusion.training import TrainConfig

PROGRESS_BAR = re.compile(r'\d+%\|')                                   # tqdm's lines, also on stderr
TINY = ['--model', 'tiny', '--size', '16', '--batch', '4']


def run(*args):
    "face-diffusion in-process: (exit status, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter('always')
        try: code = main([str(a) for a in args])
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()


def refused(code, err, *words):
    "Exit status 2, one line on stderr that starts as the command's errors do, and names each of `words`."
    assert code == 2, err
    said = [l for l in err.strip().splitlines() if not PROGRESS_BAR.search(l)]
    assert len(said) == 1 and said[0].startswith('face-diffusion: error:'), err
    for w in words: assert w in err, (w, err)


def tree(folder: Path) -> dict:
    "Every file under `folder` with its bytes: what must survive a refused command unchanged."
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def photos(folder: Path, n: int = 6, size: int = 24) -> Path:
    "A folder of small JPEG photos made here (no downloads)."
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f'p{i}.jpg')
    return folder


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A tiny run of 4 steps with checkpoints at steps 2 and 4 (copy it before changing it)."
    d = tmp_path_factory.mktemp('trained') / 'run'
    code, _, err = run('train', *TINY, '--n-images', '16', '--steps', '4', '--save-every', '2', '--out', d)
    assert code == 0, err
    return d


@pytest.fixture
def copy_of(trained, tmp_path):
    dst = tmp_path / 'run'
    shutil.copytree(trained, dst)
    return dst


# ---- 1. Data loss ------------------------------------------------------------------------------------------------

def test_overwrite_never_deletes_a_folder_holding_the_data(tmp_path):
    "train --data DIR/photos --out DIR --overwrite, where DIR holds a config.json: refused, the photos kept."
    home = tmp_path / 'home'
    photos(home / 'photos')
    (home / 'config.json').write_text('{"mine": true}')
    before = tree(home)
    refused(*run('train', *TINY, '--data', home / 'photos', '--out', home, '--overwrite', '--steps', '1')[::2],
            'contains the training data')
    assert tree(home) == before


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path):
    "--overwrite on a folder with a config.json this project did not write: refused, nothing deleted."
    d = tmp_path / 'mine'; d.mkdir()
    (d / 'config.json').write_text('{"unet": {}, "schedule": {}, "objective": "v"}')
    (d / 'notes.txt').write_text('keep me')
    before = tree(d)
    refused(*run('train', *TINY, '--n-images', '8', '--out', d, '--overwrite', '--steps', '1')[::2], 'not a run folder')
    assert tree(d) == before


def test_overwrite_never_deletes_a_run_holding_other_files(copy_of):
    "--overwrite on a real run into which a user dropped a file: refused, nothing deleted."
    (copy_of / 'samples' / 'holiday.jpg').write_bytes(b'a photo')
    before = tree(copy_of)
    refused(*run('train', *TINY, '--n-images', '8', '--out', copy_of, '--overwrite', '--steps', '1')[::2],
            'samples/holiday.jpg', 'nothing was deleted')
    assert tree(copy_of) == before


def test_overwrite_replaces_a_run_and_nothing_else(copy_of):
    code, _, err = run('train', *TINY, '--n-images', '8', '--out', copy_of, '--overwrite', '--steps', '1')
    assert code == 0, err
    assert [p.name for p in checkpoints(copy_of)] == ['step_000001']


# ---- 2. Resume forgets the data ------------------------------------------------------------------------------------

def test_resume_needs_only_the_folder_and_reads_the_same_photos(tmp_path):
    "A run on a photo folder, killed after its step-2 checkpoint, resumed with `--out DIR --resume` alone: the same photos, exactly."
    data = photos(tmp_path / 'photos')
    one_go, killed = tmp_path / 'one_go', tmp_path / 'killed'
    for d in (one_go, killed):
        assert run('train', *TINY, '--data', data, '--steps', '4', '--save-every', '2', '--out', d)[0] == 0
    shutil.rmtree(killed / 'checkpoints' / 'step_000004')                  # as if killed before its last save
    code, out, err = run('train', '--out', killed, '--resume')
    assert code == 0, err
    cfg = json.loads((killed / 'config.json').read_text())
    assert cfg['data']['kind'] == 'folder' and cfg['data']['path'] == str(data.resolve()) and cfg['data']['count'] == 6
    for name in ('model.safetensors', 'ema.safetensors'):                 # bit for bit the uninterrupted run
        a, b = load_file(one_go / name), load_file(killed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_photos_that_changed(tmp_path):
    data = photos(tmp_path / 'photos')
    assert run('train', *TINY, '--data', data, '--steps', '2', '--out', tmp_path / 'r')[0] == 0
    photos(tmp_path / 'extra', n=1).joinpath('p0.jpg').rename(data / 'new.jpg')
    refused(*run('train', '--out', tmp_path / 'r', '--resume', '--steps', '1')[::2], 'differ from the run')


@pytest.mark.parametrize('option, value, words', [
    ('--lr', 'abc', 'argument --lr: must be a number'),
    ('--size', '999', 'argument --size: must be from 16 to 128'),
    ('--batch', '-5', 'argument --batch: must be at least 1'),
    ('--model', 'nonsense', 'unknown U-Net preset'),
    ('--lr', '0.5', '--lr 0.5 contradicts the run'),
    ('--batch', '8', '--batch 8 contradicts the run'),
    ('--objective', 'eps', '--objective eps contradicts the run'),
    ('--emphasis', '0.5,0.28,0.75,0.72,30', '--emphasis [0.5, 0.28, 0.75, 0.72, 30.0] contradicts the run'),
    ('--emphasis', '0.5,0.28,0.75', 'argument --emphasis: emphasis'),
    ('--emphasis', '0.5,0.28,0.4,0.72,30', 'is out of range; give it as TOP,LEFT,BOTTOM,RIGHT,WEIGHT'),
    ('--emphasis', 'mouth', 'is not five numbers'),
    ('--data', 'synthetic', None),                                         # the same as stored: accepted
    ('--model', 'tiny', None),
    ('--size', '16', None),
])
def test_resume_checks_every_option_against_the_run(copy_of, option, value, words):
    before = tree(copy_of)
    code, out, err = run('train', '--out', copy_of, '--resume', option, value, '--steps', '1')
    if words is None:
        assert code == 0, err
        return
    refused(code, err, words)
    assert tree(copy_of) == before


def test_the_printed_resume_hint_is_the_whole_command(tmp_path):
    "Ctrl-C in training prints `face-diffusion train --out DIR --resume`: that alone continues the run."
    d = tmp_path / 'run'
    script = (f"import sys; from face_diffusion.cli import main; "
              f"sys.exit(main(['train', '--model', 'tiny', '--size', '16', '--batch', '4', '--n-images', '16', "
              f"'--steps', '100000', '--out', {str(d)!r}]))")
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        import time
        deadline = time.time() + 300
        while not (d / 'log.jsonl').exists() or len((d / 'log.jsonl').read_text().splitlines()) < 2:
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, 'training did not start'
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode == 130
    hint = out.strip().splitlines()[-1]
    assert hint == f'stopped; resume with: face-diffusion train --out {d} --resume', out
    argv = hint.split('resume with: face-diffusion ')[1].split()
    code, _, err = run(*argv, '--steps', '1')
    assert code == 0, err


# ---- 3. Damaged checkpoints ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['model.safetensors', 'ema.safetensors'])
def test_truncated_weights_are_named(copy_of, name, tmp_path):
    data = (copy_of / name).read_bytes()
    os.unlink(copy_of / name)                                              # a hard link: cut a copy, not the checkpoint
    (copy_of / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f'{name} is damaged'):            # what `sample` reads (EMA) or the raw weights
        load_run(copy_of, use_ema=name == 'ema.safetensors')
    if name == 'ema.safetensors':
        refused(*run('sample', '--run', copy_of, '--n', '2', '--out', tmp_path / 's.png')[::2], 'ema.safetensors is damaged')
    code, _, err = run('train', '--out', copy_of, '--resume', '--steps', '1')   # resume reads the intact checkpoints
    assert code == 0, err
    assert load_run(copy_of).step == 5                                     # and the run's weights are whole again


def test_damaged_state_falls_back_to_the_previous_checkpoint(copy_of):
    (copy_of / 'checkpoints' / 'step_000004' / 'state.pt').write_bytes(os.urandom(500))
    code, out, err = run('train', '--out', copy_of, '--resume', '--steps', '1')
    assert code == 0, err
    said = [l for l in err.splitlines() if l.startswith('face-diffusion:')]   # (the rest is the progress bar)
    assert len(said) == 1 and said[0].startswith('face-diffusion: warning:') and 'step_000004/state.pt is damaged' in said[0]
    assert 'falling back' in said[0]
    assert 'weights_only=False' not in err                                  # never advise unsafe loading
    assert [p.name for p in checkpoints(copy_of)][-1] == 'step_000003'     # went on from step 2


def test_every_checkpoint_damaged_is_one_line(copy_of):
    for ck in checkpoints(copy_of): (ck / 'state.pt').write_bytes(b'garbage')
    code, _, err = run('train', '--out', copy_of, '--resume', '--steps', '1')
    assert code == 2 and err.strip().splitlines()[-1].startswith('face-diffusion: error: every checkpoint')


def test_orphan_temporaries_of_a_killed_save_are_removed(copy_of):
    orphan = copy_of / 'checkpoints' / '.tmp_step_000006_99999'
    orphan.mkdir(); (orphan / 'model.safetensors').write_bytes(b'half')
    code, out, err = run('train', '--out', copy_of, '--resume', '--steps', '1')
    assert code == 0, err
    assert not orphan.exists() and 'interrupted save' in out


# ---- 4. Config and weights disagree --------------------------------------------------------------------------------

@pytest.mark.parametrize('change, words', [
    (lambda c: c['unet'].update(base_channels=32), 'base_channels'),
    (lambda c: c.update(image_size=32) or c['unet'].update(image_size=32), 'image_size'),
    (lambda c: c.update(objective='eps'), 'objective'),
    (lambda c: c['schedule'].update(kind='linear'), 'schedule.kind'),
])
def test_sampling_checks_that_config_and_weights_agree(copy_of, change, words, tmp_path):
    cfg = json.loads((copy_of / 'config.json').read_text())
    change(cfg)
    (copy_of / 'config.json').write_text(json.dumps(cfg))
    refused(*run('sample', '--run', copy_of, '--n', '2', '--out', tmp_path / 's.png')[::2], 'does not match', words)
    assert not (tmp_path / 's.png').exists()


def test_a_damaged_config_is_named(copy_of, tmp_path):
    (copy_of / 'config.json').write_text('{"unet": ')
    refused(*run('sample', '--run', copy_of, '--out', tmp_path / 's.png')[::2], 'config.json is damaged')


# ---- 5. Tracebacks -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('device, words', [('quantum', "unknown device 'quantum'"),
                                           ('cuda' if not torch.cuda.is_available() else 'cuda:99', 'device')])
def test_devices_that_are_not_there(device, words, tmp_path):
    refused(*run('train', *TINY, '--n-images', '8', '--steps', '1', '--device', device, '--out', tmp_path / 'r')[::2], words)
    refused(*run('sample', '--device', device, '--out', tmp_path / 's.png')[::2], words)


def test_out_of_memory_is_one_line_and_the_rerun_is_not_blocked(tmp_path):
    d = tmp_path / 'r'
    refused(*run('train', '--model', 'tiny', '--size', '16', '--n-images', '8', '--batch', '100000000', '--steps', '1',
                 '--out', d)[::2], 'out of memory', '--batch')
    code, _, err = run('train', *TINY, '--n-images', '8', '--steps', '1', '--out', d)   # no --overwrite needed
    assert code == 0, err


def test_ctrl_c_while_preparing_the_data_writes_nothing(tmp_path, monkeypatch):
    import face_diffusion.runs as runs
    def interrupted(self): raise KeyboardInterrupt
    monkeypatch.setattr(runs.DataSource, 'load', interrupted)
    code, out, err = run('train', *TINY, '--steps', '1', '--out', tmp_path / 'r')
    assert code == 130 and err.strip() == 'face-diffusion: interrupted'
    assert not (tmp_path / 'r').exists()


# ---- 6. No lock ----------------------------------------------------------------------------------------------------

def test_two_trainings_in_one_folder(copy_of):
    other = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])   # stands for a live trainer
    try:
        (copy_of / 'train.lock').write_text(f'{socket.gethostname()} {other.pid}\n')
        before = tree(copy_of)
        refused(*run('train', '--out', copy_of, '--resume', '--steps', '1')[::2], f'process {other.pid}')
        refused(*run('train', *TINY, '--n-images', '8', '--out', copy_of, '--overwrite', '--steps', '1')[::2], 'being trained')
        assert tree(copy_of) == before
    finally:
        other.kill(); other.wait()
    code, out, err = run('train', '--out', copy_of, '--resume', '--steps', '1')   # its process has ended: stale lock
    assert code == 0, err
    assert 'stale lock' in out and not (copy_of / 'train.lock').exists()


def test_the_lock_is_held_while_training_and_released_after(tmp_path):
    from face_diffusion.data import synthetic_faces
    from face_diffusion.training import Trainer
    from face_diffusion.unet import UNetConfig
    seen = []
    def sample_fn(model, n, gen):                                          # runs inside fit, at the sample grid
        seen.append((tmp_path / 'r' / 'train.lock').read_text().split())
        return torch.zeros(n, 3, 16, 16)
    tc = TrainConfig(steps=2, batch_size=2, warmup_steps=0, log_every=1, sample_every=1, save_every=2)
    Trainer(UNetConfig.preset('tiny', image_size=16), tc, synthetic_faces(4, 16)[0], tmp_path / 'r', device='cpu',
            sample_fn=sample_fn, progress=False).fit()
    assert seen and all(s == [socket.gethostname(), str(os.getpid())] for s in seen)
    assert not (tmp_path / 'r' / 'train.lock').exists()


# ---- 7. Face folders -----------------------------------------------------------------------------------------------

def test_photo_folder_with_a_broken_link_and_a_corrupt_file_trains(tmp_path):
    data = photos(tmp_path / 'photos')
    (data / 'broken.jpg').write_bytes(b'not a jpeg')
    (data / 'gone.jpg').symlink_to(tmp_path / 'nowhere.jpg')
    code, out, err = run('train', *TINY, '--data', data, '--steps', '1', '--out', tmp_path / 'r')
    assert code == 0, err
    assert 'broken.jpg' in err and 'gone.jpg' in err
    assert json.loads((tmp_path / 'r' / 'config.json').read_text())['data']['count'] == 6


def test_missing_or_empty_photo_folder(tmp_path):
    refused(*run('train', *TINY, '--data', tmp_path / 'nope', '--out', tmp_path / 'r')[::2], 'nope')
    (tmp_path / 'empty').mkdir()
    refused(*run('train', *TINY, '--data', tmp_path / 'empty', '--out', tmp_path / 'r')[::2], 'empty')
    assert not (tmp_path / 'r').exists()


# ---- 8. The API accepts nonsense -----------------------------------------------------------------------------------

@pytest.mark.parametrize('setting', [dict(min_snr_gamma=-5), dict(grad_clip=-1), dict(lr=float('inf')),
                                     dict(ema_decay=1.0), dict(huber_delta=0), dict(schedule='wobbly')])
def test_train_config_refuses_settings_that_train_backwards(setting):
    with pytest.raises(ValueError) as e: TrainConfig(**setting)
    assert '\n' not in str(e.value) and next(iter(setting)) in str(e.value)


def test_gif_naming_a_folder_fails_before_sampling(tmp_path):
    (tmp_path / 'anim.gif').mkdir()
    refused(*run('sample', '--n', '2', '--gif', tmp_path / 'anim.gif', '--out', tmp_path / 's.png')[::2], 'is a folder')
    assert not (tmp_path / 's.png').exists()


def test_sampling_a_model_that_outputs_nan_warns(copy_of, tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    path = copy_of / 'ema.safetensors'
    with safe_open(path, 'pt') as f: meta = f.metadata()
    w = load_file(path)
    os.unlink(path)
    save_file({k: torch.full_like(v, float('nan')) for k, v in w.items()}, path, metadata=meta)
    code, out, err = run('sample', '--run', copy_of, '--n', '2', '--steps', '2', '--out', tmp_path / 's.png')
    said = [l for l in err.splitlines() if l.startswith('face-diffusion:')]
    assert any('warning' in l and 'NaN' in l for l in said), err
    assert 'weights may be damaged' in err


# ---- 9. Conditioning (chapter 10) ------------------------------------------------------------------------------------

@pytest.mark.parametrize('attr, words', [(['smile=1'], ["unknown attribute 'smile'", 'glasses', 'mouth']),
                                         (['glasses=monocle'], ["unknown value 'monocle'", 'none, round, square, sunglasses']),
                                         (['glasses'], ['name=value']),
                                         (['mouth=grin', 'mouth=smile'], ['asked for twice'])])
def test_sample_attr_names_the_valid_attributes_and_values(attr, words, tmp_path):
    refused(*run('sample', '--attr', *attr, '--n', '2', '--out', tmp_path / 's.png')[::2], *words)
    assert not (tmp_path / 's.png').exists()


def test_attributes_on_a_model_without_them(copy_of, tmp_path):
    refused(*run('sample', '--run', copy_of, '--attr', 'glasses=round', '--out', tmp_path / 's.png')[::2],
            'conditioned on attributes', 'unconditional')
    refused(*run('sample', '--run', copy_of, '--guidance', '3', '--out', tmp_path / 's.png')[::2], 'conditioned on attributes')


def test_dropout_settings_without_a_condition(tmp_path):
    refused(*run('train', *TINY, '--n-images', '8', '--steps', '1', '--p-uncond', '0.3', '--out', tmp_path / 'r')[::2],
            '--condition attributes')
    assert not (tmp_path / 'r').exists()


def test_unknown_condition_kind(tmp_path):
    code, _, err = run('train', *TINY, '--condition', 'pose', '--out', tmp_path / 'r')
    assert code == 2 and "invalid choice: 'pose'" in err and 'attributes' in err


def celeba_folder(root: Path, rows: list, n: int = 4) -> Path:
    "n photos in root/img and a CelebA-style attribute file beside them."
    photos(root / 'img', n)
    (root / 'list_attr_celeba.txt').write_text(f'{len(rows)}\nEyeglasses Smiling\n' + '\n'.join(rows) + '\n')
    return root / 'img'


def test_malformed_attribute_file_names_its_line(tmp_path):
    img = celeba_folder(tmp_path, ['p0.jpg 1 -1', 'p1.jpg -1 1', 'p2.jpg 1', 'p3.jpg 1 1'])
    refused(*run('train', *TINY, '--data', img, '--condition', 'attributes', '--steps', '1', '--out', tmp_path / 'r')[::2],
            'list_attr_celeba.txt, line 5', '2 values of 1 or -1')


def test_photos_missing_from_the_attribute_file(tmp_path):
    img = celeba_folder(tmp_path, ['p0.jpg 1 -1', 'p1.jpg -1 1', 'p2.jpg 1 1'])
    refused(*run('train', *TINY, '--data', img, '--condition', 'attributes', '--steps', '1', '--out', tmp_path / 'r')[::2],
            '1 of 4 images have no line', 'p3.jpg')


def test_photos_without_labels(tmp_path):
    img = photos(tmp_path / 'loose', 4)
    refused(*run('train', *TINY, '--data', img, '--condition', 'attributes', '--steps', '1', '--out', tmp_path / 'r')[::2],
            'outside class subfolders', 'attribute file')


def test_conditioned_run_resumes_and_refuses_changed_labels(tmp_path):
    img = celeba_folder(tmp_path, ['p0.jpg 1 -1', 'p1.jpg -1 1', 'p2.jpg 1 1', 'p3.jpg -1 -1'])
    out = tmp_path / 'r'
    code, _, err = run('train', *TINY, '--data', img, '--condition', 'attributes', '--steps', '2', '--save-every', '1', '--out', out)
    assert code == 0, err
    cond = json.loads((out / 'config.json').read_text())['condition']
    assert cond['kind'] == 'attributes' and cond['labels']['kind'] == 'celeba' and list(cond['groups']) == ['Eyeglasses', 'Smiling']
    refused(*run('train', '--out', out, '--resume', '--condition', 'layout')[::2], '--condition layout contradicts', 'attributes')
    refused(*run('train', '--out', out, '--resume', '--p-group', '0.5')[::2], '--p-group 0.5 contradicts')
    before = tree(out)
    (tmp_path / 'list_attr_celeba.txt').write_text('4\nEyeglasses Smiling\np0.jpg -1 -1\np1.jpg -1 1\np2.jpg 1 1\np3.jpg -1 -1\n')
    refused(*run('train', '--out', out, '--resume', '--steps', '1')[::2], 'labels differ from the run')
    assert tree(out) == before
    (tmp_path / 'list_attr_celeba.txt').write_text('4\nEyeglasses Smiling\np0.jpg 1 -1\np1.jpg -1 1\np2.jpg 1 1\np3.jpg -1 -1\n')
    code, out_text, err = run('train', '--out', out, '--resume', '--steps', '1')
    assert code == 0, err
    assert 'step 3' in out_text


def test_sample_attr_from_a_class_folder_run(tmp_path):
    for name in ('happy', 'sad'): photos(tmp_path / 'faces' / name, 3)
    out = tmp_path / 'r'
    code, _, err = run('train', *TINY, '--data', tmp_path / 'faces', '--condition', 'attributes', '--steps', '1', '--out', out)
    assert code == 0, err
    code, said, err = run('sample', '--run', out, '--attr', 'class=sad', '--n', '2', '--steps', '2', '--out', tmp_path / 's.png')
    assert code == 0 and (tmp_path / 's.png').is_file() and "{'class': 'sad'}" in said, err
    refused(*run('sample', '--run', out, '--attr', 'class=angry', '--out', tmp_path / 's.png')[::2], 'use one of happy, sad')


# ---- 10. The cascade (chapter 12) ------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def superres(tmp_path_factory):
    "A tiny super-resolution run, 32 → 64 px, of 1 step (its model file: 'tiny' with attention at 16 px, a side it has)."
    from face_diffusion.unet import PRESETS
    d = tmp_path_factory.mktemp('superres')
    (d / 'tiny64.json').write_text(json.dumps({**PRESETS['tiny'], 'attention_resolutions': [16]}))
    code, _, err = run('train', '--condition', 'superres', '--model', d / 'tiny64.json', '--size', '64', '--batch', '4',
                       '--n-images', '8', '--steps', '1', '--out', d / 'run')
    assert code == 0, err
    return d / 'run'


def a_photo(path: Path, width: int = 40, height: int = 50) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize('args, words', [
    (['--condition', 'superres', '--size', '48'], ['--size must be a multiple of 32 larger than 32', 'e.g. 64', 'got 48']),
    (['--condition', 'superres', '--size', '32'], ['--size must be a multiple of 32 larger than 32', 'got 32']),
    (['--condition', 'superres', '--size', '64', '--p-uncond', '0.1'], ['--p-uncond goes with --condition attributes']),
    (['--condition', 'superres', '--size', '64', '--p-group', '0.1'], ['--p-group goes with --condition attributes']),
    (['--condition', 'superres', '--size', '64', '--attributes-file', 'list_attr_celeba.txt'], ['--attributes-file goes with']),
    (['--condition', 'superres', '--size', '64', '--degradation', 'blur'], ['--degradation and --condition']),
    (['--size', '16', '--max-level', '0.3'], ['--max-level goes with --condition superres']),
    (['--size', '16', '--condition', 'layout', '--max-level', '0.3'], ['--max-level goes with --condition superres']),
    (['--condition', 'superres', '--size', '64', '--max-level', '1.5'], ['argument --max-level: must be a finite number']),
])
def test_train_superres_refuses_what_it_cannot_use(args, words, tmp_path, monkeypatch):
    import face_diffusion.runs as runs
    monkeypatch.setattr(runs.DataSource, 'load', lambda self: pytest.fail('the data were drawn before the refusal'))
    refused(*run('train', '--model', 'tiny', '--batch', '4', '--n-images', '8', '--steps', '1', *args, '--out', tmp_path / 'r')[::2],
            *words)
    assert not (tmp_path / 'r').exists()


@pytest.mark.parametrize('image, options, words', [
    ('missing.png', [], ['missing.png does not exist']),
    ('folder', [], ['is a folder; name one image file']),
    ('corrupt.png', [], ['corrupt.png is not a readable image']),
    ('small.png', [], ['small.png is 40×20 px', 'at least 32×32 px']),
    ('photo.jpg', ['--out', 'face.jpg'], ["argument --out: must name a .png file, got 'face.jpg'"]),
    ('photo.jpg', ['--out', 'dir.png'], ["argument --out: 'dir.png' is a folder"]),
    ('photo.jpg', ['--run', 'trained'], ['is not a super-resolution run']),
    ('photo.jpg', ['--run', 'no_such_run'], ['--run no_such_run: not a run folder']),
    ('photo.jpg', ['--level', '1.5'], ['argument --level: must be a finite number ≥ 0 and ≤ 1']),
    ('photo.jpg', ['--level', '-0.5'], ['argument --level: must be a finite number ≥ 0 and ≤ 1']),
    ('photo.jpg', ['--level', 'nan'], ['argument --level: must be a finite number']),
    ('photo.jpg', ['--steps', '0'], ['argument --steps: must be at least 1']),
    ('photo.jpg', ['--steps', '5000'], ["--steps 5000 is more than the model's T = 1000"]),
])
def test_upscale_refuses_bad_photos_runs_and_levels(superres, trained, tmp_path, monkeypatch, image, options, words):
    monkeypatch.chdir(tmp_path)
    a_photo(tmp_path / 'photo.jpg'); a_photo(tmp_path / 'small.png', 40, 20)
    (tmp_path / 'corrupt.png').write_bytes(b'not a png at all')
    (tmp_path / 'folder').mkdir(); (tmp_path / 'dir.png').mkdir()
    given = {'trained': trained}
    options = [given.get(o, o) for o in options]
    out = [] if '--out' in options else ['--out', 'face.png']
    before = tree(tmp_path)
    refused(*run('upscale', image, '--run', superres, *out, *options)[::2], *words)
    assert tree(tmp_path) == before                                        # nothing written


@pytest.mark.parametrize('options, words', [
    (['--sr-run', 'SR'], ["--sr-run: only for upscaling, with a --size larger than the model's 16 px"]),
    (['--aug-level', '0.2'], ['--aug-level: only for upscaling']),
    (['--sr-steps', '3', '--size', '16'], ['--sr-steps: only for upscaling']),
    (['--size', '64', '--sr-run', 'BASE'], ['is not a super-resolution run']),
    (['--size', '64', '--sr-run', 'no_such_run'], ['--sr-run no_such_run: not a run folder']),
    (['--size', '64', '--sr-run', 'SR'], ['the model makes 16 px faces', 'sample a 32 px model']),
    (['--size', '64', '--sr-run', 'SR', '--aug-level', '2'], ['argument --aug-level: must be a finite number ≥ 0 and ≤ 1']),
    (['--run', 'SR'], ['is a super-resolution model', '--sr-run', 'face-diffusion upscale']),
])
def test_sample_size_refuses_options_and_runs_that_do_not_fit(superres, trained, tmp_path, options, words):
    given = {'SR': superres, 'BASE': trained}
    options = [given.get(o, o) for o in options]
    base = [] if '--run' in options else ['--run', trained]
    refused(*run('sample', *base, '--n', '2', *options, '--out', tmp_path / 's.png')[::2], *words)
    assert not (tmp_path / 's.png').exists()


# ---- 11. Ensembles of experts (chapter 13) ---------------------------------------------------------------------------

@pytest.fixture(scope='module')
def experts(trained, tmp_path_factory):
    "2 experts split from the tiny run, 1 step each (copy it before changing it)."
    d = tmp_path_factory.mktemp('experts') / 'ens'
    code, _, err = run('train', '--experts', '2', '--from', trained, '--steps', '2', '--out', d)
    assert code == 0, err
    return d


@pytest.fixture
def ensemble_copy(experts, tmp_path):
    dst = tmp_path / 'ens'
    shutil.copytree(experts, dst)
    return dst


@pytest.mark.parametrize('given, words', [
    ('missing', ['--from', 'missing does not exist', "'bundled'"]),
    ('a_file.txt', ['a_file.txt is a file', 'run folder']),
    ('photos', ['photos: not a run folder (no config.json)']),
    ('ENSEMBLE', ['is an ensemble of experts', 'such as its base']),
    ('EXPERT', ['is one expert (timesteps 0 … 499 only)']),
    ('DAMAGED', ['config.json is damaged']),
])
def test_experts_from_something_that_is_not_a_trained_run(experts, tmp_path, monkeypatch, given, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'a_file.txt').write_text('notes')
    photos(tmp_path / 'photos', 2)
    shutil.copytree(experts / 'base', tmp_path / 'damaged')
    (tmp_path / 'damaged' / 'config.json').write_text('{"unet": ')
    given = {'ENSEMBLE': experts, 'EXPERT': experts / 't0000-0500', 'DAMAGED': tmp_path / 'damaged'}.get(given, given)
    before = tree(tmp_path)
    refused(*run('train', '--experts', '2', '--from', given, '--steps', '2', '--out', 'ens')[::2], *words)
    assert tree(tmp_path) == before and not (tmp_path / 'ens').exists()


def test_experts_from_a_conditioned_model(tmp_path):
    from face_diffusion.runs import pretrained_dir
    refused(*run('train', '--experts', '2', '--from', pretrained_dir('attributes'), '--steps', '2', '--batch', '4',
                 '--out', tmp_path / 'ens')[::2],
            'conditioned on attributes', 'unconditional noise model')
    assert not any((tmp_path / 'ens').rglob('*'))                          # no file written


@pytest.mark.parametrize('value, words', [('3', 'must be a power of two (1, 2, 4, 8 …), got 3'), ('0', 'must be at least 1'),
                                          ('-2', 'must be at least 1'), ('1.5', 'must be a whole number'),
                                          ('2048', '2048 experts cannot split T = 1000 timesteps')])
def test_experts_count_that_cannot_be_a_tree(trained, tmp_path, value, words):
    refused(*run('train', '--experts', value, '--from', trained, '--steps', '2', '--out', tmp_path / 'ens')[::2], words)
    assert not (tmp_path / 'ens').exists()


@pytest.mark.parametrize('overwrite', [[], ['--overwrite']])
def test_experts_never_delete_a_folder_of_photos(trained, tmp_path, overwrite):
    home = photos(tmp_path / 'home')
    before = tree(home)
    refused(*run('train', '--experts', '2', '--from', trained, '--steps', '2', '--out', home, *overwrite)[::2],
            'not an ensemble of experts', 'nothing was deleted')
    assert tree(home) == before


def test_experts_never_overwrite_a_run(copy_of, trained):
    before = tree(copy_of)
    refused(*run('train', '--experts', '2', '--from', trained, '--steps', '2', '--out', copy_of, '--overwrite')[::2],
            'not an ensemble of experts', 'nothing was deleted')
    assert tree(copy_of) == before


def test_overwrite_keeps_an_ensemble_holding_a_users_file(ensemble_copy, trained):
    (ensemble_copy / 'notes.txt').write_text('keep me')
    before = tree(ensemble_copy)
    refused(*run('train', '--experts', '2', '--from', trained, '--steps', '2', '--out', ensemble_copy, '--overwrite')[::2],
            'notes.txt', 'nothing was deleted')
    assert tree(ensemble_copy) == before


def test_overwrite_keeps_an_ensemble_with_a_users_file_inside_an_expert(ensemble_copy, trained):
    (ensemble_copy / 't0000-0500' / 'samples' / 'holiday.jpg').write_bytes(b'a photo')
    before = tree(ensemble_copy)
    refused(*run('train', '--experts', '2', '--from', trained, '--steps', '2', '--out', ensemble_copy, '--overwrite')[::2],
            'holiday.jpg', 'nothing was deleted')
    assert tree(ensemble_copy) == before


def test_overwrite_keeps_an_ensemble_while_an_expert_is_trained(ensemble_copy, trained):
    other = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])   # stands for a live trainer
    try:
        (ensemble_copy / 't0000-0500' / 'train.lock').write_text(f'{socket.gethostname()} {other.pid}\n')
        before = tree(ensemble_copy)
        refused(*run('train', '--experts', '2', '--from', trained, '--steps', '2', '--out', ensemble_copy, '--overwrite')[::2],
                'being trained')
        assert tree(ensemble_copy) == before
    finally:
        other.kill(); other.wait()


def test_experts_from_inside_the_ensemble_they_would_replace(ensemble_copy):
    "--from ENS/base --out ENS --overwrite would delete the base before copying it: refused, nothing deleted."
    before = tree(ensemble_copy)
    for base in ('base', 't0000-0500'):
        refused(*run('train', '--experts', '2', '--from', ensemble_copy / base, '--steps', '2', '--out', ensemble_copy,
                     '--overwrite')[::2], 'is inside --out', 'another folder')
    assert tree(ensemble_copy) == before


@pytest.mark.parametrize('record, words', [('{"format": "face_diffusion ens', 'ensemble.json is damaged'),
                                           ('{"experts": []}', "not written by face_diffusion"),
                                           ('[1, 2]', "not written by face_diffusion")])
def test_a_damaged_ensemble_record_is_named(ensemble_copy, trained, tmp_path, record, words):
    (ensemble_copy / 'ensemble.json').write_text(record)
    before = tree(ensemble_copy)
    refused(*run('sample', '--run', ensemble_copy, '--n', '2', '--out', tmp_path / 's.png')[::2], words)
    refused(*run('train', '--out', ensemble_copy, '--resume')[::2], words)
    refused(*run('train', '--experts', '2', '--from', trained, '--steps', '2', '--out', ensemble_copy, '--overwrite')[::2], words)
    assert tree(ensemble_copy) == before and not (tmp_path / 's.png').exists()


def test_an_expert_deleted_before_sampling(ensemble_copy, tmp_path):
    shutil.rmtree(ensemble_copy / 't0500-1000')
    refused(*run('sample', '--run', ensemble_copy, '--n', '2', '--out', tmp_path / 's.png')[::2],
            'expert t0500-1000', 'is missing', '--resume')
    assert not (tmp_path / 's.png').exists()
    code, _, err = run('train', '--out', ensemble_copy, '--resume')            # what the line says to do
    assert code == 0, err
    code, _, err = run('sample', '--run', ensemble_copy, '--n', '2', '--steps', '2', '--keep', 'disk', '--out', tmp_path / 's.png')
    assert code == 0 and (tmp_path / 's.png').is_file(), err


def test_an_experts_truncated_weights_are_named(ensemble_copy, tmp_path):
    path = ensemble_copy / 't0000-0500' / 'ema.safetensors'
    data = path.read_bytes()
    os.unlink(path)                                                         # a hard link: cut a copy, not the checkpoint
    path.write_bytes(data[: len(data) // 2])
    for keep in ('memory', 'disk'):
        refused(*run('sample', '--run', ensemble_copy, '--n', '2', '--steps', '2', '--keep', keep, '--out', tmp_path / 's.png')[::2],
                'ema.safetensors is damaged')
    assert not (tmp_path / 's.png').exists()


def test_keep_and_expert_folders_are_not_single_models(copy_of, experts, tmp_path):
    refused(*run('sample', '--run', copy_of, '--keep', 'disk', '--out', tmp_path / 's.png')[::2], '--keep is for an ensemble')
    refused(*run('sample', '--run', experts / 't0500-1000', '--out', tmp_path / 's.png')[::2],
            'is one expert', 'timesteps 500 … 999 only', f'--run {experts}')
    refused(*run('train', '--out', experts, '--steps', '1')[::2], 'holds an ensemble of experts', '--resume')
    assert not (tmp_path / 's.png').exists()


def test_the_printed_ensemble_resume_hint_is_the_whole_command(trained, tmp_path):
    "Ctrl-C while an expert trains: the last line is `face-diffusion train --out ENS --resume`, and that alone finishes it."
    d = tmp_path / 'ens'
    script = (f"import sys; from face_diffusion.cli import main; "
              f"sys.exit(main(['train', '--experts', '2', '--from', {str(trained)!r}, '--steps', '40', '--out', {str(d)!r}]))")
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log = d / 't0000-0500' / 'log.jsonl'
    try:
        import time
        deadline = time.time() + 300
        while not log.exists() or len(log.read_text().splitlines()) < 2:
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, 'training did not start'
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode == 130, err
    hint = out.strip().splitlines()[-1]
    assert hint == f'stopped; resume with: face-diffusion train --out {d} --resume', out
    code, said, err = run(*hint.split('resume with: face-diffusion ')[1].split())
    assert code == 0, err
    assert [p.name for p in checkpoints(d / 't0500-1000')][-1] == 'step_000020' and 'trained an ensemble of 2 experts' in said


# ---- 12. Inpainting and editing (chapter 14) -----------------------------------------------------------------------

def a_mask(path: Path, width: int = 40, height: int = 50, box=(15, 30, 8, 32), mode: str = 'L', **save) -> Path:
    "White (fill) in `box` = (top, bottom, left, right), black elsewhere, saved in `mode`."
    a = np.zeros((height, width), np.uint8)
    a[box[0]:box[1], box[2]:box[3]] = 255
    make = {'1': lambda: Image.fromarray(a > 0).convert('1'), 'I;16': lambda: Image.fromarray(a.astype(np.uint16) * 257),
            'RGBA': lambda: Image.fromarray(np.dstack([a, a, a, np.full_like(a, 255)]))}   # RGBA: opaque
    make.get(mode, lambda: Image.fromarray(a).convert(mode))().save(path, **save)
    return path


def inpainted(photo, mask, out, *options):
    "inpaint with the bundled model in a few steps: (exit status, stdout, stderr)."
    return run('inpaint', photo, '--mask', mask, '--steps', '4', '--jump', '2', '--resamples', '2', *options, '--out', out)


@pytest.mark.parametrize('case, words', [
    ('larger', ['mask.png is 80×100 but the image', 'photo.jpg is 40×50', 'make them the same size']),
    ('turned', ['mask.png is 50×40 but the image', 'is 40×50']),
    ('the photo', ['photo.jpg is not black and white', 'pixels are grey']),
    ('black', ['all black: nothing to fill']),
    ('white', ['all white: nothing is kept']),
    ('a hair', ['mask.png brought to 32×32 px (its square centre) is all black']),
    ('beside the square', ['brought to 32×32 px (its square centre) is all black']),
])
def test_masks_that_do_not_fit_the_photo(tmp_path, case, words):
    "A mask painted on the full-size original, turned, the photo itself, empty, full, too thin, or outside the crop."
    photo, mask = a_photo(tmp_path / 'photo.jpg', *((100, 125) if case == 'a hair' else ())), tmp_path / 'mask.png'
    if case == 'larger': a_mask(mask, 80, 100, (30, 60, 16, 64))
    if case == 'turned': a_mask(mask, 50, 40)
    if case == 'the photo': mask = photo
    if case == 'black': a_mask(mask, box=(0, 0, 0, 0))
    if case == 'white': a_mask(mask, box=(0, 50, 0, 40))
    if case == 'a hair': a_mask(mask, 100, 125, (30, 90, 50, 51))       # one pixel wide: a third of one at 32 px
    if case == 'beside the square': a_mask(mask, box=(0, 5, 0, 40))     # the top rows, which the centre crop drops
    before = tree(tmp_path)
    refused(*inpainted(photo, mask, tmp_path / 'o.png')[::2], *words)
    assert tree(tmp_path) == before


@pytest.mark.parametrize('mode, suffix, save', [('1', '.png', {}), ('I;16', '.png', {}), ('P', '.png', {}), ('RGB', '.png', {}),
                                                ('RGBA', '.png', {}), ('L', '.jpg', {'quality': 95}), ('L', '.bmp', {})])
def test_masks_in_other_formats_paint_the_same_hole(tmp_path, mode, suffix, save):
    photo = a_photo(tmp_path / 'photo.jpg')
    code, _, err = inpainted(photo, a_mask(tmp_path / 'mask.png'), tmp_path / 'a.png')
    assert code == 0, err
    code, _, err = inpainted(photo, a_mask(tmp_path / f'other{suffix}', mode=mode, **save), tmp_path / 'b.png')
    assert code == 0, err
    assert (tmp_path / 'a.png').read_bytes() == (tmp_path / 'b.png').read_bytes()


def test_a_jpeg_mask_at_the_usual_quality(tmp_path):
    "Pillow's default JPEG quality (75) rings up to about 22 grey levels at a mask's edges: still black and white."
    photo, box = a_photo(tmp_path / 'photo.jpg', 48, 40), (12, 26, 10, 30)
    code, _, err = inpainted(photo, a_mask(tmp_path / 'mask.png', 48, 40, box), tmp_path / 'a.png')
    assert code == 0, err
    code, _, err = inpainted(photo, a_mask(tmp_path / 'mask.jpg', 48, 40, box), tmp_path / 'b.png')
    assert code == 0, err
    assert (tmp_path / 'a.png').read_bytes() == (tmp_path / 'b.png').read_bytes()


def test_a_phone_photo_turned_by_exif_with_the_mask_painted_as_shown(tmp_path):
    "Stored 50 wide and 40 high, shown turned (EXIF orientation 6) 40 × 50: the mask is painted on what is shown."
    stored = np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    exif = Image.Exif(); exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / 'phone.jpg', exif=exif)
    a_mask(tmp_path / 'mask.png', 40, 50, (5, 25, 0, 40))               # the top half of the shown centre square
    code, out, err = inpainted(tmp_path / 'phone.jpg', tmp_path / 'mask.png', tmp_path / 'o.png')
    assert code == 0 and '512 of 1024 pixels filled' in out, err
    from face_diffusion.data import load_image
    shown = load_image(tmp_path / 'phone.jpg', 32).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(tmp_path / 'o.png'))[16:], shown[16:])   # the kept half, the right way up


def test_a_tiny_photo_is_enlarged_with_its_mask(tmp_path):
    code, out, err = inpainted(a_photo(tmp_path / 'tiny.png', 12, 10), a_mask(tmp_path / 'mask.png', 12, 10, (0, 5, 1, 11)),
                               tmp_path / 'o.png')
    assert code == 0 and '512 of 1024 pixels filled' in out, err
    assert Image.open(tmp_path / 'o.png').size == (32, 32)


def test_jumps_longer_than_the_grid_make_no_climbs(tmp_path):
    code, out, err = run('inpaint', a_photo(tmp_path / 'photo.jpg'), '--mask', a_mask(tmp_path / 'mask.png'), '--steps', '6',
                         '--jump', '20', '--resamples', '5', '--out', tmp_path / 'o.png')
    assert code == 0 and '6 network calls' in out, err


@pytest.mark.parametrize('command', ['inpaint', 'edit'])
def test_one_expert_of_an_ensemble_is_not_a_whole_model(experts, tmp_path, command):
    mask = ['--mask', a_mask(tmp_path / 'mask.png')] if command == 'inpaint' else []
    refused(*run(command, a_photo(tmp_path / 'photo.jpg'), *mask, '--run', experts / 't0500-1000', '--steps', '2',
                 '--out', tmp_path / 'o.png')[::2], 'is one expert')
    assert not (tmp_path / 'o.png').exists()


@pytest.mark.parametrize('options, words', [
    (['--run', 'A_FILE'], ['notes.txt']),
    (['--run', 'PHOTOS'], ['photos: not a run folder (no config.json)']),
    (['--run', 'ENSEMBLE', '--attr', 'glasses=round'], ['is not a run folder']),
    (['--run', 'TRAINED', '--attr', 'glasses=round'], ['not conditioned on attributes']),
    (['--run', 'SUPERRES'], ['conditioned on superres', 'unconditional noise model']),
    (['--attr', 'glasses=round', '--guidance', 'inf'], ['argument --guidance: must be a finite number']),
    (['--attr', 'glasses=round', '--guidance', '-1'], ['argument --guidance: must be a finite number ≥ 0']),
    (['--strength', '-0.5'], ['argument --strength']),
    (['--out', 'FOLDER'], ["is a folder; name a .png file"]),
    (['--device', 'tpu'], ['tpu']),
])
def test_edit_refuses_runs_and_settings_it_cannot_use(trained, experts, superres, tmp_path, monkeypatch, options, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'notes.txt').write_text('notes'); photos(tmp_path / 'photos', 2); (tmp_path / 'folder.png').mkdir()
    given = {'A_FILE': tmp_path / 'notes.txt', 'PHOTOS': tmp_path / 'photos', 'ENSEMBLE': experts, 'TRAINED': trained,
             'SUPERRES': superres, 'FOLDER': tmp_path / 'folder.png'}
    options = [given.get(o, o) for o in options]
    out = [] if '--out' in options else ['--out', 'o.png']
    a_photo(tmp_path / 'photo.jpg')
    before = tree(tmp_path)
    refused(*run('edit', 'photo.jpg', '--steps', '2', *options, *out)[::2], *words)
    assert tree(tmp_path) == before


def test_an_out_in_a_new_folder_is_made(tmp_path):
    out = tmp_path / 'new' / 'deeper' / 'o.png'
    code, _, err = run('edit', a_photo(tmp_path / 'photo.jpg'), '--steps', '2', '--out', out)
    assert code == 0 and Image.open(out).size == (32, 32), err
