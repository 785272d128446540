"""The `face-diffusion` command: in-process through `main` (fast, and immune to a busy machine), and once as a process."""
import subprocess, sys

import numpy as np
import pytest
from PIL import Image

from one_line import run_main
from face_diffusion.cli import main
from face_diffusion.data import image_grid, synthetic_faces


def cli(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, '-m', 'face_diffusion.cli', *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)


def test_faces_writes_the_grid(tmp_path):
    out = tmp_path / 'new' / 'faces.png'
    r = cli('faces', '--n', 6, '--size', 32, '--seed', 3, '--nrow', 3, '--out', out)
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout and r.stderr == ''
    img = np.asarray(Image.open(out).convert('RGB'))
    assert img.shape == (2 + 2 * 34, 2 + 3 * 34, 3)                       # 2 rows of 3 faces, 32 px + 2 px padding
    assert np.array_equal(img, image_grid(synthetic_faces(6, 32, 3)[0], nrow=3))   # exactly the seeded faces


def test_help_for_every_subcommand(capsys):
    r = cli('--help')                                                      # in a process, as a person runs it
    assert r.returncode == 0 and 'faces' in r.stdout and 'demo' in r.stdout
    for name, option in [('faces', '--size'), ('train', '--resume'), ('sample', '--sampler'), ('demo', '--minutes')]:
        with pytest.raises(SystemExit) as e: main([name, '--help'])
        out = capsys.readouterr().out
        assert e.value.code == 0 and option in out and f'face-diffusion {name}' in out, (name, out)


@pytest.mark.parametrize('args, words', [
    (['faces', '--size', '8'], 'argument --size: must be from 16 to 128'),
    (['faces', '--size', '200'], 'argument --size: must be from 16 to 128'),
    (['faces', '--n', '0'], 'argument --n: must be from 1 to 10000'),
    (['faces', '--n', 'lots'], 'argument --n: must be a whole number'),
    (['faces', '--seed', '-1'], 'argument --seed: must be at least 0'),
    (['faces', '--out', 'faces.jpgx'], 'argument --out: must name a .png file'),
    (['faces', '--unknown'], 'unrecognized arguments'),
    (['sing'], 'invalid choice'),
    ([], 'required'),
    (['sample', '--run', 'no_such_run'], 'not a run folder'),
    (['sample', '--sampler', 'euler'], "argument --sampler: invalid choice: 'euler'"),
    (['sample', '--eta', '1.5'], 'argument --eta: must be a finite number ≥ 0 and ≤ 1'),
    (['sample', '--sampler', 'dpm++', '--eta', '0.5'], 'the dpm++ sampler is deterministic'),
    (['sample', '--spacing', 'even'], "argument --spacing: invalid choice: 'even'"),
    (['sample', '--n', '0'], 'argument --n: must be from 1 to 1024'),
    (['train', '--model', 'huge'], 'unknown U-Net preset'),
    (['train', '--objective', 'noise'], "argument --objective: invalid choice: 'noise'"),
    (['train', '--data', 'no_such_folder'], 'no_such_folder'),
    (['train', '--steps', '0'], 'argument --steps: must be at least 1'),
    (['train', '--lr', 'fast'], 'argument --lr: must be a number'),
    (['demo', '--minutes', '-1'], 'argument --minutes: must be a finite number'),
])
def test_bad_values_one_line(args, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)                                            # nothing may be written here either
    try: code = main(args)                                                 # our own checks return 2
    except SystemExit as e: code = e.code                                  # argparse exits with 2
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith('face-diffusion: error:') and words in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


def test_bad_value_in_a_process(tmp_path):
    r = cli('faces', '--size', '7', '--out', tmp_path / 'f.png')
    assert r.returncode == 2 and r.stdout == ''
    assert r.stderr.strip() == 'face-diffusion: error: argument --size: must be from 16 to 128, got 7 (see `face-diffusion faces --help`)'
    assert not (tmp_path / 'f.png').exists()


def test_demo_trains_and_samples(tmp_path, monkeypatch):
    "The main job end to end, with a training budget of about a second (the real demo trains for 10 minutes)."
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main('demo', '--minutes', '0.02', '--device', 'cpu', '--n', '4')   # 4 faces per grid: seconds
    assert code == 0, err
    demo = tmp_path / 'demo_out'
    for name in ['pretrained_samples.png', 'samples.png', 'denoising.gif', 'run/config.json', 'run/ema.safetensors']:
        assert (demo / name).is_file(), (name, out)
    for name in ('pretrained_samples.png', 'samples.png'):
        assert Image.open(demo / name).size == (2 + 2 * 34, 2 + 2 * 34)             # 4 faces of 32 px
    assert 'training images/s' in out
    code, _, err = run_main('demo', '--minutes', '0.02')                          # an earlier run is kept
    assert code == 2 and 'pass --overwrite' in err and len(err.strip().splitlines()) == 1


def test_train_resume_and_sample(tmp_path):
    run = tmp_path / 'run'
    base = ['train', '--model', 'tiny', '--size', '16', '--n-images', '32', '--batch', '4', '--out', run]
    code, _, err = run_main(*base, '--steps', '4')
    assert code == 0, err
    assert (run / 'checkpoints' / 'step_000004').is_dir()
    code, _, err = run_main('train', '--out', run, '--resume', '--steps', '2')    # two more steps; the data come from the run
    assert code == 0, err
    assert (run / 'checkpoints' / 'step_000006').is_dir()
    code, _, err = run_main(*base, '--steps', '4')                                # never replaced by accident
    assert code == 2 and '--overwrite' in err and (run / 'checkpoints' / 'step_000006').is_dir()
    a, b = tmp_path / 'a.png', tmp_path / 'b.png'
    for path in (a, b):
        code, _, err = run_main('sample', '--run', run, '--n', '4', '--steps', '3', '--seed', '7', '--out', path)
        assert code == 0, err
    assert np.array_equal(np.array(Image.open(a)), np.array(Image.open(b)))


def test_demo_trains_in_the_faster_precision(monkeypatch):
    "On a CPU the demo times fp32 and bf16 and trains in the faster (bf16 loses badly on CPUs without bf16 instructions)."
    import face_diffusion.training as training
    from face_diffusion.unet import UNetConfig
    for fast in ('fp32', 'bf16'):
        monkeypatch.setattr(training, 'measure_train_speed',
                            lambda unet, batch, device, precision, seconds: 200.0 if precision == fast else 100.0)
        assert training.fastest_precision(UNetConfig.preset('tiny'), 4, 'cpu', seconds=0.1) == (fast, 200.0)
