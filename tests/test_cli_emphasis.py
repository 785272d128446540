"""`train --emphasis`: the loss weights a box of the image more (chapter 04's `emphasis_map`); the run records it, and a
resume keeps it."""
import contextlib, io, json

import torch

from face_diffusion.cli import main
from face_diffusion.training import Trainer, diffusion_loss, emphasis_map
from face_diffusion.unet import UNetConfig

TINY = ['--model', 'tiny', '--size', '16', '--batch', '4', '--n-images', '16']
BOX = [0.25, 0.25, 0.75, 0.75, 9.0]


def run(*args) -> tuple:
    "face-diffusion in-process: (exit status, stderr)."
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try: code = main([str(a) for a in args])
        except SystemExit as e: code = e.code
    return code, err.getvalue()


def test_emphasis_is_recorded_and_kept_on_resume(tmp_path):
    d = tmp_path / 'run'
    code, err = run('train', *TINY, '--steps', '2', '--emphasis', ','.join(map(str, BOX)), '--out', d)
    assert code == 0, err
    assert json.loads((d / 'config.json').read_text())['train']['emphasis'] == BOX
    assert torch.equal(Trainer.resume(d, progress=False).pixel_weight.cpu(), emphasis_map(BOX, 16))
    code, err = run('train', '--out', d, '--resume', '--steps', '1')
    assert code == 0, err
    assert json.loads((d / 'config.json').read_text())['train']['emphasis'] == BOX


def test_the_trainer_weights_its_loss_with_the_box(tmp_path):
    "The trainer's loss is diffusion_loss with the box's weights: the same seed, network, batch, t and noise, recomputed."
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    def trainer(name):
        tc = dict(batch_size=4, steps=1, emphasis=BOX, sample_every=0, precision='fp32')
        return Trainer(UNetConfig.preset('tiny', image_size=16), tc, images, tmp_path / name, device='cpu', progress=False)
    used = float(trainer('a').micro_batch_loss())
    twin = trainer('b')                                     # the same random streams, replayed by hand
    x0, _ = twin._batch()
    state = twin.gen.get_state()
    recomputed = {}
    for name, weight in (('weighted', emphasis_map(BOX, 16)), ('plain', None)):
        twin.gen.set_state(state)
        recomputed[name] = float(diffusion_loss(twin.model, twin.schedule, x0, 'v', min_snr_gamma=5.0, generator=twin.gen,
                                                pixel_weight=weight))
    print(f"trainer {used:.6f}; recomputed with the box {recomputed['weighted']:.6f}, without {recomputed['plain']:.6f}")
    assert abs(used - recomputed['weighted']) < 1e-6 * used and abs(used - recomputed['plain']) > 1e-3 * used


def test_a_box_that_covers_no_pixel_is_refused_before_any_file_is_written(tmp_path):
    code, err = run('train', *TINY, '--steps', '2', '--emphasis', '0.5,0.5,0.51,0.51,3', '--out', tmp_path / 'run')
    lines = [l for l in err.strip().splitlines() if '%|' not in l]
    assert code == 2 and len(lines) == 1 and 'covers no pixel at 16 px; widen it' in lines[0], err
    assert not (tmp_path / 'run').exists()
