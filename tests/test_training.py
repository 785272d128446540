"""Tests of face_diffusion.training: learning, exact resume, interrupts, refusals and NaNs (CPU, small)."""
import dataclasses, json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import torch

from face_diffusion.data import synthetic_faces, to_float
from face_diffusion.forward import NoiseSchedule
from face_diffusion.training import EMA, NonFiniteLossError, TrainConfig, Trainer, diffusion_loss
from face_diffusion.runs import check_safetensors, checkpoints, load_run, read_log
from face_diffusion.unet import UNetConfig, build_unet

TINY16 = dict(UNetConfig.preset('tiny').to_dict(), image_size=16)


def tiny16(**kw):
    return UNetConfig.from_dict({**TINY16, **kw})


def small(**kw):
    base = dict(steps=6, batch_size=4, warmup_steps=2, log_every=2, save_every=100, sample_every=0, seed=3)
    return TrainConfig(**{**base, **kw})




@pytest.fixture(scope='module')
def faces16():
    return synthetic_faces(64, 16, seed=1)[0]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@torch.no_grad()
def probe_loss(model, images, objective):
    "A fixed-noise, fixed-t loss on fixed images: comparable before and after training."
    g = torch.Generator().manual_seed(123)
    x0 = to_float(images)
    sched = NoiseSchedule('cosine', 1000)
    t = torch.randint(0, 1000, (len(x0),), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    return diffusion_loss(model.eval(), sched, x0, objective, t=t, noise=noise).item()


def test_loss_drops_on_synthetic_faces(tmp_path):
    images = synthetic_faces(256, 16, seed=0)[0]
    cfg = small(steps=300, batch_size=8, lr=2e-3, warmup_steps=20, log_every=25, save_every=300, ema_decay=0.99)
    tr = Trainer(tiny16(), cfg, images, tmp_path / 'run', device='cpu', progress=False)
    before = probe_loss(tr.model, images[:64], cfg.objective)
    tr.fit()
    after = probe_loss(tr.ema.module, images[:64], cfg.objective)
    log = read_log(tmp_path / 'run')
    print(f'probe loss {before:.4f} -> {after:.4f}; log {log[0]["loss"]:.4f} -> {log[-1]["loss"]:.4f}; '
          f'{log[-1]["img_per_s"]} img/s')
    assert after < 0.7 * before                          # measured: 0.59 → 0.30 (about 0.5×)
    assert log[-1]['loss'] < log[0]['loss']


def test_overfit_one_batch():
    torch.manual_seed(0)
    model = build_unet(tiny16())
    x0 = to_float(synthetic_faces(8, 16, seed=2)[0])
    sched = NoiseSchedule('cosine', 1000)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (8,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for step in range(150):
        loss = diffusion_loss(model, sched, x0, 'v', t=t, noise=noise)   # the same x_t and target every step
        opt.zero_grad(); loss.backward(); opt.step()
        first = first if first is not None else loss.item()
    print(f'one batch: loss {first:.4f} -> {loss.item():.5f}')
    # measured: 0.54 → 0.010–0.014 after 150 steps (0.022 after 100). A v target has unit variance, so 0.04 is
    # "near zero": the network reproduces the eight targets to within 4% of their variance.
    assert loss.item() < 0.04 and loss.item() < 0.1 * first


def test_exact_resume(tmp_path, faces16):
    # dropout (torch's global RNG), flips, grad accumulation and the EMA warm-up all have to line up
    uc = tiny16(dropout=0.1)
    cfg = small(steps=8, grad_accum=2, keep_last=2)
    one_go = Trainer(uc, cfg, faces16, tmp_path / 'one_go', device='cpu', progress=False).fit()
    stopped = Trainer(uc, cfg, faces16, tmp_path / 'stopped', device='cpu', progress=False).fit(max_steps=4)
    assert stopped.step == 4 and [p.name for p in checkpoints(tmp_path / 'stopped')] == ['step_000004']
    del stopped
    resumed = Trainer.resume(tmp_path / 'stopped', faces16, device='cpu', progress=False).fit()
    assert resumed.step == one_go.step == 8
    assert same(one_go.model.state_dict(), resumed.model.state_dict())
    assert same(one_go.ema.module.state_dict(), resumed.ema.module.state_dict())
    assert one_go.ema.num_updates == resumed.ema.num_updates == 8
    a, b = one_go.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert a['state'].keys() == b['state'].keys() and all(same(a['state'][k], b['state'][k]) for k in a['state'])
    assert a['param_groups'] == b['param_groups']
    assert torch.equal(one_go.gen.get_state(), resumed.gen.get_state())
    # the saved files agree too: the same tensors and the same metadata (safetensors writes the metadata keys in a
    # random order, so the files' bytes may differ)
    from safetensors.torch import load_file
    for name in ('model.safetensors', 'ema.safetensors'):
        a_path, b_path = tmp_path / 'one_go' / name, tmp_path / 'stopped' / name
        assert same(load_file(a_path), load_file(b_path))
        assert check_safetensors(a_path) == check_safetensors(b_path)


SCRIPT = textwrap.dedent('''
    import sys, torch
    torch.set_num_threads(1)
    from face_diffusion.data import synthetic_faces
    from face_diffusion.training import Trainer, TrainConfig
    from face_diffusion.unet import UNetConfig
    uc = UNetConfig.from_dict(dict(UNetConfig.preset('tiny').to_dict(), image_size=16))
    tc = TrainConfig(steps=100_000, batch_size=4, warmup_steps=0, log_every=1, save_every=100_000, sample_every=0)
    Trainer(uc, tc, synthetic_faces(32, 16)[0], sys.argv[1], device='cpu', progress=False).fit()
''')


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_leaves_loadable_checkpoint(tmp_path, sig):
    run_dir = tmp_path / 'run'
    proc = subprocess.Popen([sys.executable, '-c', SCRIPT, str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while len(read_log(run_dir)) < 3:                # wait until it is really training
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, 'training did not start'
            time.sleep(0.2)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode != 0
    assert f'{signal.Signals(sig).name} at step' in out, (out, err)
    run = load_run(run_dir)
    assert run.step >= 3 and all(torch.isfinite(p).all() for p in run.model.parameters())
    assert [p.name for p in checkpoints(run_dir)] == [f'step_{run.step:06d}']
    resumed = Trainer.resume(run_dir, synthetic_faces(32, 16)[0], extra_steps=2, device='cpu', progress=False)
    assert resumed.step == run.step
    resumed.fit()
    assert resumed.step == run.step + 2


def test_existing_run_folder_is_not_overwritten(tmp_path, faces16):
    Trainer(tiny16(), small(steps=2), faces16, tmp_path / 'run', device='cpu', progress=False).fit()
    before = {p: p.read_bytes() for p in (tmp_path / 'run').rglob('*') if p.is_file()}
    with pytest.raises(ValueError, match=r'^\S*run holds a run; pass --resume to continue it or --overwrite to replace it, or choose another --out$'):
        Trainer(tiny16(), small(steps=2), faces16, tmp_path / 'run', device='cpu')
    assert {p: p.read_bytes() for p in (tmp_path / 'run').rglob('*') if p.is_file()} == before
    # overwrite=True replaces it …
    Trainer(tiny16(), small(steps=1), faces16, tmp_path / 'run', device='cpu', overwrite=True, progress=False).fit()
    assert load_run(tmp_path / 'run').step == 1
    # … but never a folder that is not a run folder
    other = tmp_path / 'photos'; other.mkdir(); (other / 'keep.txt').write_text('mine')
    with pytest.raises(ValueError, match='not a run folder'):
        Trainer(tiny16(), small(), faces16, other, device='cpu', overwrite=True)
    assert (other / 'keep.txt').read_text() == 'mine'


def test_checkpoint_of_a_different_model_is_refused(tmp_path, faces16):
    Trainer(tiny16(), small(steps=2), faces16, tmp_path / 'run', device='cpu', progress=False).fit()
    with pytest.raises(ValueError) as err:
        Trainer(tiny16(base_channels=16), small(steps=2), faces16, tmp_path / 'run', device='cpu',
                resume_from=checkpoints(tmp_path / 'run')[-1])
    msg = str(err.value)
    assert 'unet.base_channels' in msg and '\n' not in msg
    other = Trainer(tiny16(base_channels=16), small(steps=2), faces16, tmp_path / 'other', device='cpu')
    with pytest.raises(ValueError, match='different model'):
        other.load_checkpoint(checkpoints(tmp_path / 'run')[-1])
    with pytest.raises(ValueError, match='objective'):
        Trainer(tiny16(), small(steps=2, objective='eps'), faces16, tmp_path / 'run', device='cpu',
                resume_from=checkpoints(tmp_path / 'run')[-1])


def test_nan_loss_stops_the_run(tmp_path, faces16):
    tr = Trainer(tiny16(), small(steps=30, log_every=5, save_every=4, keep_last=10), faces16, tmp_path / 'run',
                 device='cpu', progress=False)
    calls = []
    def poison(module, args, output):
        calls.append(1)
        return output * float('nan') if len(calls) >= 9 else output
    tr.model.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError) as err:
        tr.fit()
    msg = str(err.value)
    assert isinstance(err.value, FloatingPointError) and isinstance(err.value, ValueError)
    assert 'step 9' in msg and 'step_000008' in msg and '\n' not in msg
    assert [p.name for p in checkpoints(tmp_path / 'run')] == ['step_000004', 'step_000008']
    run = load_run(tmp_path / 'run')
    assert run.step == 8 and all(torch.isfinite(p).all() for p in run.model.parameters())


def test_nan_from_a_huge_learning_rate_is_caught_before_saving(tmp_path, faces16):
    cfg = small(steps=20, lr=1e30, warmup_steps=0, grad_clip=None, log_every=50, save_every=3)
    with pytest.raises(NonFiniteLossError, match='last good checkpoint'):
        Trainer(tiny16(), cfg, faces16, tmp_path / 'run', device='cpu', progress=False).fit()
    if checkpoints(tmp_path / 'run'):                    # whatever was saved is finite
        assert all(torch.isfinite(p).all() for p in load_run(tmp_path / 'run').model.parameters())


def test_missing_or_incomplete_run_folders(tmp_path, faces16):
    with pytest.raises(FileNotFoundError, match='not a run folder'):
        load_run(tmp_path / 'nothing')
    Trainer(tiny16(), small(), faces16, tmp_path / 'fresh', device='cpu')   # config.json, no checkpoint yet
    with pytest.raises(FileNotFoundError, match='has no ema.safetensors'):
        load_run(tmp_path / 'fresh')
    with pytest.raises(FileNotFoundError, match='no checkpoint to resume'):
        Trainer.resume(tmp_path / 'fresh', faces16)


def test_bad_inputs_are_one_line_value_errors(tmp_path, faces16):
    for kw in ({'objective': 'noise'}, {'loss': 'mse'}, {'precision': 'fp8'}, {'steps': 0}):
        with pytest.raises(ValueError): small(**kw)
    with pytest.raises(ValueError, match='expects 3×32×32'):
        Trainer(UNetConfig.preset('tiny'), small(), faces16, tmp_path / 'a', device='cpu')
    with pytest.raises(ValueError, match='uint8'):
        Trainer(tiny16(), small(), to_float(faces16), tmp_path / 'b', device='cpu')
    with pytest.raises(ValueError, match='fp16'):
        Trainer(tiny16(), small(precision='fp16'), faces16, tmp_path / 'c', device='cpu')


def test_run_folder_layout_and_log(tmp_path, faces16):
    cfg = small(steps=6, log_every=2, save_every=2, keep_last=2, sample_every=3, sample_n=4, sample_steps=3)
    Trainer(tiny16(), cfg, faces16, tmp_path / 'run', device='cpu', progress=False).fit()
    d = tmp_path / 'run'
    config = json.loads((d / 'config.json').read_text())
    assert set(config) == {'format', 'format_version', 'unet', 'schedule', 'objective', 'train', 'image_size', 'data', 'world_size',
                           'global_batch', 'condition'}
    assert config['world_size'] == 1 and config['global_batch'] == cfg.batch_size * cfg.grad_accum
    assert config['condition'] is None                                            # unconditioned
    assert config['data']['kind'] == 'tensor' and config['data']['count'] == len(faces16)
    assert (d / 'scheduler_config.json').is_file()
    assert [p.name for p in checkpoints(d)] == ['step_000004', 'step_000006']     # keep_last=2
    assert sorted(p.name for p in (d / 'samples').iterdir()) == ['step_000003.png', 'step_000006.png']
    assert not [p for p in d.rglob('*') if '.tmp' in p.name]                     # no temporary files left
    assert [r['step'] for r in read_log(d)] == [2, 4, 6]
    assert all(set(r) >= {'step', 'loss', 'lr', 'img_per_s'} for r in read_log(d))


def test_ema_warmup_and_average():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.9)
    assert ema.current_decay == pytest.approx(0.1)
    for _ in range(100): ema.update(net)
    assert ema.current_decay == 0.9
    with pytest.raises(ValueError): EMA(net, decay=1.0)


def test_sample_grids_show_the_ema_model(tmp_path, faces16):
    "The last grid is exactly a fresh EMA sample (not the raw weights'), and training changed it since the first grid."
    from types import SimpleNamespace
    import copy
    import numpy as np
    from PIL import Image
    from face_diffusion.data import save_grid
    cfg = small(steps=40, lr=2e-3, sample_every=20, sample_n=4, sample_steps=5, ema_decay=0.9)
    tr = Trainer(tiny16(), cfg, faces16, tmp_path / 'run', device='cpu', progress=False).fit()
    grids = sorted((tmp_path / 'run' / 'samples').glob('step_*.png'))
    assert [p.name for p in grids] == ['step_000020.png', 'step_000040.png']
    pixels = lambda p: np.asarray(Image.open(p).convert('RGB'), dtype=np.int16)
    def off(trainer):                                    # fraction of values more than one grey level from the last grid
        fresh = save_grid(trainer.sample().float().clamp(-1, 1), tmp_path / f'fresh_{id(trainer)}.png')
        return (np.abs(pixels(fresh) - pixels(grids[-1])) > 1).mean()
    raw = copy.copy(tr)
    raw.ema = SimpleNamespace(module=copy.deepcopy(tr.model).eval())   # a trainer that would sample the raw weights
    assert off(tr) < 1e-3                                # measured: 0
    assert off(raw) > 0.05                               # measured: about 0.3
    assert np.abs(pixels(grids[0]) - pixels(grids[-1])).mean() > 2


def test_posterior_coefficients_give_the_elbo_weight():
    "KL(q(x_{t−1}|x_t,x_0) ‖ p_θ) with the library's posterior = ½(SNR_{t−1} − SNR_t)‖x_0 − x̂_0‖² (variance β̃_t)."
    from face_diffusion.forward import q_posterior
    sched = NoiseSchedule('cosine', 1000)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([1, 5, 50, 200, 500, 800, 990])
    x0 = torch.rand(len(t), 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    mu_q, var, _ = q_posterior(sched, x0, x_t, t)
    mu_p, _, _ = q_posterior(sched, x0_hat, x_t, t)      # the model's mean: x̂_0 in place of x_0
    kl = (mu_q - mu_p).pow(2).flatten(1).sum(1) / (2 * var.flatten(1)[:, 0])
    f = sched.f64
    snr_prev = f.alphas_cumprod_prev[t] / (1 - f.alphas_cumprod_prev[t])
    expected = 0.5 * (snr_prev - f.snr[t]) * (x0 - x0_hat).pow(2).flatten(1).sum(1)
    assert torch.allclose(kl, expected, rtol=1e-5)       # float32 coefficients: measured within 1e-6


def test_lr_decays_along_a_cosine():
    "A quarter, half and three quarters of the way from peak to floor: η_min + ½(η − η_min)(1 + cos πp)."
    import math
    from face_diffusion.training import lr_at
    for p in (0.25, 0.5, 0.75):
        expected = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * p))   # 0.868, 0.55, 0.232 × lr
        assert lr_at(100 + round(900 * p), 1e-3, 1000, 100) == pytest.approx(expected, abs=1e-12)
    assert lr_at(99, 1e-3, 1000, 100) == pytest.approx(1e-3) and lr_at(999, 1e-3, 1000, 100) == pytest.approx(1e-4, abs=1e-7)


def test_ema_cap_and_no_warmup():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.999)
    for _ in range(1600): ema.update(net)
    assert ema.current_decay == pytest.approx(1601 / 1610)   # the chapter's run never reaches 0.999
    plain = EMA(net, decay=0.999, warmup=False)
    before = plain.module.weight.clone()
    with torch.no_grad(): net.weight.add_(1.0)
    plain.update(net)
    assert torch.allclose(plain.module.weight, 0.999 * before + 0.001 * net.weight)


def test_exact_targets_score_zero_against_their_written_formulas():
    "The oracle's target is written out here (not taken from model_target), so a slip in model_target fails."
    sched = NoiseSchedule('cosine', 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 50, 200, 500, 800, 999])
    ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    written = {'eps': eps, 'x0': x0, 'v': ab.sqrt() * eps - (1 - ab).sqrt() * x0}   # v = √ᾱ ε − √(1−ᾱ) x_0
    for objective, target in written.items():
        for loss in ('l2', 'l1', 'huber'):
            model = lambda x_t, tt, target=target: target
            assert diffusion_loss(model, sched, x0, objective, loss, t=t, noise=eps).item() < 1e-6, (objective, loss)


def test_ddim_preview_follows_the_exact_gaussian_path():
    "For N(μ, s²) data the ideal denoiser is linear, so the whole deterministic path is known; a broken update fails."
    import inspect
    from unittest import mock
    from face_diffusion import training
    from face_diffusion.forward import velocity, predict_noise_from_start, extract
    sched = NoiseSchedule('cosine', 1000)
    mu, s = 0.1, 0.15
    def ideal_v(x_t, t):
        ab = extract(sched.alphas_cumprod, t, x_t.shape)
        x0 = mu + ab.sqrt() * s ** 2 / (ab * s ** 2 + 1 - ab) * (x_t - ab.sqrt() * mu)         # E[x_0|x_t]
        return velocity(sched, x0, predict_noise_from_start(sched, x_t, t, x0), t)
    def exact(x_T, steps=10):
        abar, x = sched.f64.alphas_cumprod, x_T.double()
        ts = [round(999 - k * 999 / (steps - 1)) for k in range(steps)]
        for k, t in enumerate(ts):
            ab = abar[t]
            ab_next = abar[ts[k + 1]] if k + 1 < steps else torch.tensor(1.0, dtype=torch.float64)
            x0 = mu + ab.sqrt() * s ** 2 / (ab * s ** 2 + 1 - ab) * (x - ab.sqrt() * mu)
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
            x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps              # x_{t'} = √ᾱ' x̂_0 + √(1−ᾱ') ε̂
        return x.float()
    def miss():
        out = training.ddim_preview(ideal_v, sched, 'v', 32, 8, steps=10, generator=torch.Generator().manual_seed(0))
        return (out - exact(torch.randn((32, 3, 8, 8), generator=torch.Generator().manual_seed(0)))).abs().max().item()
    assert miss() < 1e-4                                                      # measured: about 5e-6
    true_update = training.ddim_update
    def halve_and_noise(x0_hat, eps_hat, ab_next):
        return x0_hat if bool(ab_next == 1) else 0.5 * true_update(x0_hat, eps_hat, ab_next) + torch.randn_like(x0_hat)
    with mock.patch.dict(inspect.unwrap(training.ddim_preview).__globals__, ddim_update=halve_and_noise):
        assert miss() > 0.1
