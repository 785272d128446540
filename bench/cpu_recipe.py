"""Quality of a training recipe on the CPU, as the README's tables report it: train a small U-Net on synthetic faces
for a wall-clock budget, sample, and score the samples by patch SWD as a multiple of the real-vs-real floor
(chapter 07). Also scores an existing run folder (e.g. the bundled model).

    python -m bench.cpu_recipe list                                                   # the recipes, one line each
    OMP_NUM_THREADS=1 python -m bench.cpu_recipe train v-bf16-minsnr5 --minutes 10    # one row of the recipe table
    python -m bench.cpu_recipe score face_diffusion/pretrained --n 1024 --floors 2    # a run's quality figures
    python -m bench.cpu_recipe score face_diffusion/pretrained --sampler ddim --spacing trailing --seeds 3
"""
import argparse, json, time
from pathlib import Path

from face_diffusion.data import synthetic_faces
from face_diffusion.metrics import nearest_neighbours, swd_multiple
from face_diffusion.sampling import SAMPLERS, SPACINGS, sample_run
from face_diffusion.runs import load_run
from face_diffusion.training import Trainer, TrainConfig, measure_train_speed
from face_diffusion.unet import UNetConfig

OFF = dict(min_snr_gamma=None)   # the rows were measured without min-SNR unless they name it
V = dict(objective='v', schedule='cosine', lr=1e-3, **OFF)
RECIPES = {   # name: TrainConfig fields, plus 'unet' (changes to the cpu32 preset) and 'batch_size' (default 64)
    'eps-linear-2e-4': dict(objective='eps', schedule='linear', lr=2e-4, **OFF),
    'eps-cosine-1e-3': dict(objective='eps', schedule='cosine', lr=1e-3, **OFF),
    'v-cosine-1e-3': dict(V),
    'v-cosine-2e-3': dict(V, lr=2e-3),
    'v-bf16': dict(V, precision='bf16'),
    'v-bf16-wide32': dict(V, precision='bf16', unet=dict(base_channels=32, channel_mults=(1, 2, 2, 2))),
    'v-bf16-minsnr5': dict(V, precision='bf16', min_snr_gamma=5.0),
    'v-bf16-minsnr5-batch32': dict(V, precision='bf16', min_snr_gamma=5.0, batch_size=32),
    'v-bf16-minsnr5-batch16': dict(V, precision='bf16', min_snr_gamma=5.0, batch_size=16),
    'v-minsnr5-batch32': dict(V, precision='fp32', min_snr_gamma=5.0, batch_size=32),
    'v-bf16-minsnr5-wide16': dict(V, precision='bf16', min_snr_gamma=5.0, unet=dict(channel_mults=(1, 3, 6, 6))),
}
REFERENCE_SEED, HELDOUT_SEED, FRESH_SEED = 1000, 2000, 3000     # held-out synthetic faces; training uses seed 0

def score(run, n: int, sampler: str = 'dpm++', steps: int = 50, floors: int = 4, seeds: int = 1, spacing=None) -> dict:
    """SWD × floor of n samples against held-out faces (floor averaged over `floors` draws), with a real-face control;
    with seeds > 1, the mean over sampling seeds 1 … seeds (one seed's n samples vary the multiple by about ±10%)."""
    size = run.image_size
    reference = synthetic_faces(n, size=size, seed=REFERENCE_SEED)[0]
    heldout = synthetic_faces(floors * n, size=size, seed=HELDOUT_SEED)[0]
    fresh = synthetic_faces(n, size=size, seed=FRESH_SEED)[0]
    train = synthetic_faces(20_000, size=size, seed=0)[0]
    per_seed, t0 = [], time.perf_counter()
    for seed in range(1, seeds + 1):
        samples = sample_run(run, n, sampler, steps=steps, seed=seed, spacing=spacing)
        per_seed.append(swd_multiple(samples, reference, heldout, n=n, per_level=True))
    sampling_s = (time.perf_counter() - t0) / seeds
    levels = {f'{k}px': round(sum(m.levels[k] for m in per_seed) / seeds, 2) for k in per_seed[0].levels}
    return dict(n=n, sampler=sampler, steps=steps, spacing=spacing or 'default', seeds=seeds, sampling_and_swd_s=round(sampling_s, 1),
                swd_multiple=round(sum(m.mean for m in per_seed) / seeds, 2), by_seed=[round(m.mean, 2) for m in per_seed],
                by_level=levels, real_faces_control=round(float(swd_multiple(fresh, reference, heldout, n=n)), 2),
                copied_fraction=round(float(nearest_neighbours(samples[:256], train).copied.float().mean()), 3))

def train(name: str, minutes: float, out: Path) -> Path:
    "Train recipe `name` for about `minutes` (steps from measured throughput) into out/name."
    recipe = dict(RECIPES[name])
    unet = UNetConfig.preset('cpu32', image_size=32, **recipe.pop('unet', {}))
    batch = recipe.pop('batch_size', 64)
    ips = measure_train_speed(unet, batch, 'cpu', precision=recipe.get('precision', 'auto'), seconds=6)
    steps = max(20, int(minutes * 60 * ips / batch * 0.95))
    tc = TrainConfig(batch_size=batch, steps=steps, warmup_steps=min(200, steps // 10), sample_every=max(1, steps // 4),
                     save_every=steps, log_every=50, seed=0, **recipe)
    t0 = time.perf_counter()
    Trainer(unet, tc, synthetic_faces(20_000, size=32, seed=0)[0], out / name, overwrite=True, device='cpu',
            progress=False).fit()
    print(json.dumps(dict(recipe=name, **RECIPES[name], steps=steps, train_img_per_s=round(ips, 1),
                          train_minutes=round((time.perf_counter() - t0) / 60, 2))))
    return out / name

def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m bench.cpu_recipe', description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='command', required=True)
    sub.add_parser('list', help='the recipes and what each sets')
    t = sub.add_parser('train', help='train one recipe for a time budget, then score it')
    t.add_argument('recipe', choices=sorted(RECIPES))
    t.add_argument('--minutes', type=float, default=10.0)
    t.add_argument('--out', type=Path, default=Path('runs/recipes'))
    s = sub.add_parser('score', help='score an existing run folder')
    s.add_argument('run', type=Path)
    for q in (t, s):
        q.add_argument('--n', type=int, default=256, help='samples to score (default 256)')
        q.add_argument('--sampler', choices=SAMPLERS, default='dpm++', help='default dpm++')
        q.add_argument('--steps', type=int, default=50, help='sampling steps (default 50)')
        q.add_argument('--floors', type=int, default=4, help='held-out draws averaged for the floor (default 4)')
        q.add_argument('--seeds', type=int, default=1, help='average over sampling seeds 1 … SEEDS (default 1)')
        q.add_argument('--spacing', choices=SPACINGS, default=None, help="timestep spacing (default: the sampler's own)")
    args = p.parse_args(argv)
    if args.command == 'list':
        for name, recipe in RECIPES.items(): print(f"{name:<26} {recipe}")
        return
    run_dir = train(args.recipe, args.minutes, args.out) if args.command == 'train' else args.run
    print(json.dumps(dict(run=str(run_dir), **score(load_run(run_dir), args.n, args.sampler, args.steps, args.floors, args.seeds, args.spacing))))

if __name__ == '__main__':
    main()
