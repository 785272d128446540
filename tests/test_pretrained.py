"""The bundled model: it loads from the package alone, samples reproducibly, and its quality does not regress.

The bound comes from measurement (face_diffusion/pretrained/MADE_WITH.md): with these seeds and settings the
bundled model scored QUALITY_MEASURED × the real-vs-real floor; a broken sampler or model scores many times more."""
import torch
from PIL import Image

from face_diffusion.data import synthetic_faces
from face_diffusion.metrics import swd_multiple
from face_diffusion.sampling import sample_run
from face_diffusion.runs import load_run, pretrained_dir

N, STEPS = 128, 25                       # DPM-Solver++ with 25 steps on 128 faces: seconds on a CPU
QUALITY_MEASURED = 1.32                  # measured: n = 128, DPM-Solver++ 25 steps, seeds 1 / 1000 / 2000
QUALITY_BOUND = 1.7                      # +29%: room for other torch versions; the previous, weaker bundled model scored
                                         # 2.19 here, a 10-minute CPU run 2.30, Gaussian noise (σ = 0.5) 11.3
NULL_QUALITY_BOUND = 1.55                # measured 1.19 in the same setting (the unconditional model: 1.32); +30%


def test_bundled_model_is_small_and_complete():
    d = pretrained_dir()
    assert (d / 'config.json').is_file() and (d / 'ema.safetensors').is_file() and (d / 'MADE_WITH.md').is_file()
    assert sum(f.stat().st_size for f in d.iterdir()) < 20 * 2 ** 20


def test_bundled_model_quality_does_not_regress():
    run = load_run(pretrained_dir())
    samples = sample_run(run, N, 'dpm++', steps=STEPS, seed=1)
    again = sample_run(run, 4, 'dpm++', steps=STEPS, seed=1)
    assert torch.equal(again, sample_run(run, 4, 'dpm++', steps=STEPS, seed=1))  # a seed gives the same faces
    assert torch.allclose(samples[:4], again, atol=1e-4)                     # whatever the batch (float rounding aside)
    size = run.image_size
    reference = synthetic_faces(N, size=size, seed=1000)[0]
    heldout = synthetic_faces(4 * N, size=size, seed=2000)[0]                # floor averaged over 4 draws
    multiple = swd_multiple(samples, reference, heldout, n=N)
    print(f"bundled model: SWD = {multiple:.2f} × floor (n = {N}, DPM-Solver++ {STEPS} steps)")
    assert multiple <= QUALITY_BOUND, f"bundled model quality regressed: {multiple:.2f} × floor > {QUALITY_BOUND}"


def test_sample_without_run_uses_bundled_model(tmp_path, capsys):
    from face_diffusion.cli import main
    assert main(['sample', '--n', '4', '--steps', '10', '--out', str(tmp_path / 'faces.png')]) == 0, capsys.readouterr().err
    assert Image.open(tmp_path / 'faces.png').size == (2 + 2 * 34, 2 + 2 * 34)


# ---- the bundled attribute model (chapter 10) ------------------------------------------------------------------------
EYES = (slice(13, 16), slice(9, 23))      # rows and columns of the eyes at 32 px: sunglasses darken them by ~95 of 255


def eye_darkness(images: torch.Tensor) -> float:
    "How much darker than mid-grey the eye band is, in [0, 1] units of the [−1, 1] range (mean over images and colours)."
    return float(-images[:, :, EYES[0], EYES[1]].mean() / 2)


def test_bundled_attribute_model_is_complete():
    d = pretrained_dir('attributes')
    assert (d / 'config.json').is_file() and (d / 'ema.safetensors').is_file() and (d / 'MADE_WITH.md').is_file()
    run = load_run(d)
    assert run.step == 8000 and run.config['condition']['kind'] == 'attributes'
    assert run.config['unet']['cond_groups'] == [6, 4, 5, 6, 5, 3, 4, 4, 3]


def test_guidance_steers_the_bundled_attribute_model():
    "Asked for sunglasses, the eyes are dark; asked for no glasses, they are not; the real faces tell how dark."
    from face_diffusion.conditioning import sample_attributes
    run = load_run(pretrained_dir('attributes'))
    faces, attrs = synthetic_faces(512, size=32, seed=1000)
    x = faces.float() / 127.5 - 1
    real_sun, real_none = eye_darkness(x[attrs['glasses'] == 3]), eye_darkness(x[attrs['glasses'] == 0])
    sun = eye_darkness(sample_attributes(run, 32, ['glasses=sunglasses'], 3.0, steps=STEPS, seed=1))
    none = eye_darkness(sample_attributes(run, 32, ['glasses=none'], 3.0, steps=STEPS, seed=1))
    print(f"eye darkness: sunglasses {sun:.3f} (real {real_sun:.3f}), none {none:.3f} (real {real_none:.3f})")
    gap = real_sun - real_none
    assert sun - none > 0.6 * gap                                            # the request shows in the pixels
    assert abs(sun - real_sun) < 0.3 * gap and abs(none - real_none) < 0.3 * gap


def test_bundled_attribute_model_null_condition_quality():
    "Told nothing (cond=None: every group null), it is an unconditional model as good as the unconditional one."
    run = load_run(pretrained_dir('attributes'))
    samples = sample_run(run, N, 'dpm++', steps=STEPS, seed=1)
    reference = synthetic_faces(N, size=32, seed=1000)[0]
    heldout = synthetic_faces(4 * N, size=32, seed=2000)[0]
    multiple = swd_multiple(samples, reference, heldout, n=N)
    print(f"bundled attribute model, null condition: SWD = {multiple:.2f} × floor (n = {N}, DPM-Solver++ {STEPS} steps)")
    assert multiple <= NULL_QUALITY_BOUND, f"null-condition quality regressed: {multiple:.2f} × floor > {NULL_QUALITY_BOUND}"


def test_the_documented_command_writes_the_bundled_attribute_config(tmp_path):
    "MADE_WITH.md's command, parsed and set up (not trained), writes the bundled model's config.json."
    import json
    from face_diffusion.cli import _new_trainer, build_parser
    made_with = (pretrained_dir('attributes') / 'MADE_WITH.md').read_text()
    command = made_with.split('```sh')[1].split('```')[0].replace('\\\n', ' ').split()
    argv = command[command.index('face-diffusion') + 1:]
    argv[argv.index('--out') + 1] = str(tmp_path / 'run')
    args = build_parser().parse_args(argv)
    _new_trainer(args, tmp_path / 'run')
    written = json.loads((tmp_path / 'run' / 'config.json').read_text())
    bundled = json.loads((pretrained_dir('attributes') / 'config.json').read_text())
    assert written == bundled
