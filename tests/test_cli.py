"""The `face-diffusion` command, run as a separate process the way a person runs it."""
import subprocess, sys

import numpy as np
import pytest
from PIL import Image

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
    (['faces', '--size', '8'], '--size must be from 16 to 128'),
    (['faces', '--size', '200'], '--size must be from 16 to 128'),
    (['faces', '--n', '0'], '--n must be from 1 to 10000'),
    (['faces', '--n', 'lots'], '--n must be a whole number'),
    (['faces', '--seed', '-1'], '--seed must be at least 0'),
    (['faces', '--out', 'faces.jpgx'], '--out must name a .png file'),
    (['faces', '--unknown'], 'unrecognized arguments'),
    (['sing'], 'invalid choice'),
    ([], 'required'),
    (['sample', '--run', 'no_such_run'], 'not a run folder'),
    (['sample', '--sampler', 'euler'], '--sampler must be one of ddpm, ddim'),
    (['sample', '--eta', '1.5'], '--eta must be from 0 to 1'),
    (['sample', '--sampler', 'dpm++', '--eta', '0.5'], 'the dpm++ sampler is deterministic'),
    (['sample', '--spacing', 'even'], '--spacing must be one of uniform, trailing, quadratic'),
    (['sample', '--n', '0'], '--n must be from 1 to 1024'),
    (['train', '--model', 'huge'], 'unknown U-Net preset'),
    (['train', '--objective', 'noise'], '--objective must be one of eps, x0, v'),
    (['train', '--data', 'no_such_folder'], 'no_such_folder'),
    (['train', '--steps', '0'], '--steps must be at least 1'),
    (['train', '--lr', 'fast'], '--lr must be a number'),
    (['demo', '--minutes', '-1'], '--minutes must be a finite number'),
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
    assert r.stderr.strip() == 'face-diffusion: error: --size must be from 16 to 128, got 7'
    assert not (tmp_path / 'f.png').exists()


def test_demo_trains_and_samples(tmp_path):
    "The main job end to end, with a training budget of about a second (the real demo trains for 10 minutes)."
    r = cli('demo', '--minutes', '0.02', '--device', 'cpu', cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    out = tmp_path / 'demo_out'
    for name in ['samples.png', 'denoising.gif', 'run/config.json', 'run/ema.safetensors']:
        assert (out / name).is_file(), (name, r.stdout)
    assert Image.open(out / 'samples.png').size == (2 + 8 * 34, 2 + 8 * 34)       # 64 faces of 32 px
    assert 'training images/s' in r.stdout
    again = cli('demo', '--minutes', '0.02', cwd=tmp_path)                         # an earlier run is kept
    assert again.returncode == 2 and 'pass --overwrite' in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_train_resume_and_sample(tmp_path):
    run = tmp_path / 'run'
    base = ['train', '--model', 'tiny', '--size', '16', '--n-images', '32', '--batch', '4', '--out', run]
    r = cli(*base, '--steps', '4')
    assert r.returncode == 0, r.stderr
    assert (run / 'checkpoints' / 'step_000004').is_dir()
    r = cli('train', '--out', run, '--resume', '--n-images', '32', '--steps', '2')  # two more steps of the same run
    assert r.returncode == 0, r.stderr
    assert (run / 'checkpoints' / 'step_000006').is_dir()
    r = cli(*base, '--steps', '4')                                                 # never replaced by accident
    assert r.returncode == 2 and '--overwrite' in r.stderr and (run / 'checkpoints' / 'step_000006').is_dir()
    r = cli('sample', '--run', run, '--n', '4', '--steps', '3', '--seed', '7', '--out', tmp_path / 'a.png')
    r2 = cli('sample', '--run', run, '--n', '4', '--steps', '3', '--seed', '7', '--out', tmp_path / 'b.png')
    assert r.returncode == r2.returncode == 0, r.stderr + r2.stderr
    assert np.array_equal(np.array(Image.open(tmp_path / 'a.png')), np.array(Image.open(tmp_path / 'b.png')))


def test_demo_trains_in_the_faster_precision(monkeypatch):
    "On a CPU the demo times fp32 and bf16 and trains in the faster (bf16 loses badly on CPUs without bf16 instructions)."
    import face_diffusion.cli as cli_module
    from face_diffusion.unet import UNetConfig
    for fast in ('fp32', 'bf16'):
        monkeypatch.setattr(cli_module, 'measure_train_speed',
                            lambda unet, batch, device, precision, seconds: 200.0 if precision == fast else 100.0)
        assert cli_module.fastest_precision(UNetConfig.preset('tiny'), 4, 'cpu', seconds=0.1) == (fast, 200.0)
