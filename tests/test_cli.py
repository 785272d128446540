"""The `face-diffusion` command, run as a separate process the way a person runs it."""
import subprocess, sys

import numpy as np
import pytest
from PIL import Image

from face_diffusion.cli import main
from face_diffusion.data import image_grid, synthetic_faces


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, '-m', 'face_diffusion.cli', *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


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
    for name, option in [('faces', '--size'), ('demo', '--out-dir')]:
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


def test_demo_writes_faces(tmp_path):
    r = cli('demo', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / 'demo_out' / 'faces.png').is_file() and 'faces.png' in r.stdout
    assert Image.open(tmp_path / 'demo_out' / 'faces.png').size == (2 + 8 * 66, 2 + 8 * 66)
