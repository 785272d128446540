"""Tests of face_diffusion.experts (chapter 13): timestep ranges, the ensemble's routing and samples (exactly the model's
when the experts are copies; DPM-Solver++ keeps its memory across a hand-over), experts kept on disk, the fine-tuning
tree, training, exact resume and folder safety; and the Trainer's `timesteps=` and `init_weights=` (CPU, tiny)."""
import copy, json, shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import face_diffusion.training as training
from face_diffusion.experts import (ENSEMBLE_FILE, ExpertEnsemble, check_ranges, halves, is_ensemble, load_ensemble,
                                    plan_experts, preview_model, read_ensemble, resume_experts, train_experts, tree_ranges)
from face_diffusion.runs import DataSource, checkpoint_step, checkpoints, load_run, pretrained_dir, read_config
from face_diffusion.sampling import make_sampler, sample_run
from face_diffusion.training import TrainConfig, Trainer, diffusion_loss
from face_diffusion.unet import UNetConfig, build_unet
from one_line import refused

T = 64
UNET = UNetConfig.preset('tiny', image_size=16, zero_init=False)   # outputs far from zero: samples tell models apart
DATA = dict(kind='synthetic', size=16, n=16)
ENSEMBLE = dict(experts=4, steps=8, batch_size=4, device='cpu', progress=False)   # levels of 2 × 2 and 4 × 1 steps
FOLDERS = ['t00-32', 't32-64', 't00-16', 't16-32', 't32-48', 't48-64']            # the tree, level by level


def train_config(**kw):
    return TrainConfig(**{**dict(T=T, steps=2, batch_size=4, warmup_steps=0, log_every=1, save_every=1, sample_every=0,
                                 sample_n=2, sample_steps=2, precision='fp32'), **kw})


def tiny_trainer(path, **kw):
    steps = kw.pop('steps', 2)
    return Trainer(UNET, train_config(steps=steps), DataSource(**DATA), path, device='cpu', progress=False, **kw)


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def weight_bytes(model):
    return sum(p.numel() * p.element_size() for p in list(model.parameters()) + list(model.buffers()))


class Const(nn.Module):
    "A toy expert: returns its number everywhere and remembers the t and cond it was called with."
    def __init__(self, k): super().__init__(); self.k, self.calls = k, []
    def forward(self, x_t, t, cond=None):
        self.calls.append((torch.as_tensor(t).clone(), cond))
        return torch.full_like(x_t, float(self.k))


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    "A base run: the tiny U-Net, 2 steps on 16 synthetic faces, T = 64."
    d = tmp_path_factory.mktemp('base') / 'run'
    tiny_trainer(d).fit()
    return d


@pytest.fixture(scope='module')
def ensemble(base, tmp_path_factory):
    """4 experts split from `base`, with what each expert's Trainer started from (model and EMA) and the t it trained on
    (recorded where the loss noises x_0, so whatever draws t is seen)."""
    out = tmp_path_factory.mktemp('ensemble') / 'ens'
    start, drawn, current = {}, {}, {}
    real_init, real_step, real_q = Trainer.__init__, Trainer.train_step, training.q_sample
    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        start[self.run_dir.name] = [{k: v.clone() for k, v in m.state_dict().items()} for m in (self.model, self.ema.module)]
    def step(self):
        current['folder'] = self.run_dir.name
        return real_step(self)
    def q_sample(schedule, x0, t, noise=None):
        drawn.setdefault(current['folder'], []).append(t.clone())
        return real_q(schedule, x0, t, noise=noise)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, '__init__', init); mp.setattr(Trainer, 'train_step', step); mp.setattr(training, 'q_sample', q_sample)
        train_experts(base, out, **ENSEMBLE)
    return out, start, drawn


# --- timestep ranges ---

def test_tree_ranges_halve_each_level():
    assert halves(0, 7) == ((0, 3), (3, 7)) and halves(500, 1000) == ((500, 750), (750, 1000))
    assert tree_ranges(1000, 2) == [[(0, 1000)], [(0, 500), (500, 1000)], [(0, 250), (250, 500), (500, 750), (750, 1000)]]
    assert tree_ranges(7, 0) == [[(0, 7)]]
    tree = tree_ranges(7, 3)
    assert [len(level) for level in tree] == [1, 2, 4, 8]
    for level in tree[:3]: assert check_ranges(level, 7) == level        # each level holds 0 … T−1 exactly once
    for above, below in zip(tree, tree[1:]):                             # each range is cut into its two halves
        assert below == [h for r in above for h in halves(*r)]


def test_check_ranges_names_gaps_overlaps_and_empty_ranges_in_one_line():
    refused(lambda: check_ranges([(0, 10), (12, 20)], 20), 'gap', 't = 10 … 11')
    refused(lambda: check_ranges([(0, 12), (10, 20)], 20), 'overlap', 't = 10 … 11')
    refused(lambda: check_ranges([(0, 10), (10, 10), (10, 20)], 20), '[10, 10) is empty')
    refused(lambda: check_ranges([(0, 10), (10, 5)], 20), '[10, 5) is empty')
    refused(lambda: check_ranges([(0, 10), (10, 25)], 20), 'reach t = 24', 'last timestep 19')
    refused(lambda: check_ranges([(5, 20)], 20), 'gap', 't = 0 … 4')
    refused(lambda: check_ranges([(0, 10)], 20), 'gap', 't = 10 … 19')
    refused(lambda: check_ranges([], 20), 'no expert ranges')
    refused(lambda: check_ranges([('a', 3)], 20), '(lo, hi) pairs of whole numbers')
    assert check_ranges([(10, 20), (0, 4), [4, 10]], 20) == [(0, 4), (4, 10), (10, 20)]   # any order, sorted back


# --- routing ---

def test_each_image_goes_to_the_expert_whose_range_holds_its_t():
    toys = [Const(k) for k in range(3)]
    ens = ExpertEnsemble([toys[2], toys[0], toys[1]], [(25, 40), (0, 10), (10, 25)], 40)   # experts follow their ranges
    assert ens.ranges == [(0, 10), (10, 25), (25, 40)]
    x = torch.zeros(1, 3, 4, 4)
    for t, k in ((0, 0), (9, 0), (10, 1), (24, 1), (25, 2), (39, 2)):     # lo and hi − 1 are the owner's, hi the next's
        assert ens(x, torch.tensor([t])).unique().tolist() == [k], t
        assert ens(x, t).unique().tolist() == [k], t                      # a plain number works too
    assert ens.expert_index(torch.tensor([0, 9, 10, 24, 25, 39])).tolist() == [0, 0, 1, 1, 2, 2]
    t = torch.tensor([39, 0, 10, 24, 9, 25])
    out = ens(torch.zeros(6, 3, 4, 4), t)                                 # mixed timesteps: each image from its own expert
    assert out[:, 0, 0, 0].tolist() == [2, 0, 1, 1, 0, 2] and out.shape == (6, 3, 4, 4)
    assert sorted(toys[1].calls[-1][0].tolist()) == [10, 24]             # an expert sees only its images' t
    cond = {'attributes': torch.zeros(2, 3)}
    ens(torch.zeros(2, 3, 4, 4), torch.tensor([30, 31]), cond=cond)       # one expert: the condition goes with the batch
    assert toys[2].calls[-1][1] is cond
    refused(lambda: ens(torch.zeros(2, 3, 4, 4), torch.tensor([5, 30]), cond=cond), 'span several experts', 'split it by expert')


def test_ensemble_refuses_mismatched_experts_in_one_line(tmp_path):
    refused(lambda: ExpertEnsemble([Const(0)], [(0, 5), (5, 10)], 10), '1 experts for 2 timestep ranges')
    refused(lambda: ExpertEnsemble([Const(0), Const(1)], [(0, 5), (6, 10)], 10), 'gap', 't = 5 … 5')
    refused(lambda: ExpertEnsemble([Const(0)], [(0, 10)], 10, keep='disk'), "keep='disk'", 'run folders')
    refused(lambda: ExpertEnsemble([Const(0)], [(0, 10)], 10, keep='cache'), 'cache')


def test_preview_model_puts_the_expert_in_its_range_and_the_base_elsewhere():
    b, e = Const(0), Const(1)
    x = torch.zeros(5, 1, 2, 2)
    out = preview_model(b, e, (16, 32), 64)(x, torch.tensor([0, 15, 16, 31, 32]))
    assert out[:, 0, 0, 0].tolist() == [0, 0, 1, 1, 0]
    assert preview_model(b, e, (0, 64), 64)(x[:2], torch.tensor([0, 63])).flatten().unique().tolist() == [1]


# --- samples ---

@pytest.mark.parametrize('sampler, steps', [('ddpm', None), ('ddim', 10), ('dpm++', 10)])
def test_an_ensemble_of_copies_samples_exactly_as_the_model(base, sampler, steps):
    "The issue's requirement: routing changes nothing when every expert is the same network."
    run = load_run(base)
    ens = ExpertEnsemble([copy.deepcopy(run.model) for _ in range(4)], tree_ranges(T, 2)[-1], T)
    want = sample_run(run, 3, sampler, steps=steps, seed=1)
    assert want.std() > 0.1                                               # a model whose outputs matter
    assert torch.equal(sample_run(run, 3, sampler, steps=steps, seed=1, model=ens), want)


def test_the_ensemble_loss_is_the_models_when_the_experts_are_copies(base):
    "Chapter 04's loss over all t (a batch that spans the experts) sees the model the copies are."
    run = load_run(base)
    ens = ExpertEnsemble([copy.deepcopy(run.model) for _ in range(4)], tree_ranges(T, 2)[-1], T)
    x0 = torch.rand(8, 3, 16, 16) * 2 - 1
    t = torch.tensor([0, 63, 17, 40, 5, 33, 50, 20])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = (diffusion_loss(m, run.schedule, x0, run.objective, t=t, noise=noise, reduction='none') for m in (ens, run.model))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dpm_solver_keeps_its_memory_across_a_hand_over(base):
    "Two different experts: the ensemble is the loop that switches models but not the sampler's previous x̂_0."
    run = load_run(base)
    low, high = run.model, copy.deepcopy(run.model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in high.parameters(): p.add_(0.05 * torch.randn(p.shape, generator=g))
    ens = ExpertEnsemble([low, high], [(0, 32), (32, T)], T)
    n, seed = 3, 2
    got = sample_run(run, n, 'dpm++', steps=8, seed=seed, model=ens)
    def by_hand(reset_at_hand_over):
        smp = make_sampler('dpm++', run.schedule, run.objective, steps=8)
        ts = smp.timesteps.tolist()
        assert ts[0] >= 32 and 0 <= ts[-2] < 32                           # a hand-over, with a second-order step after it
        x = torch.randn((n, 3, 16, 16), generator=torch.Generator().manual_seed(seed))
        smp.reset()
        with torch.no_grad():
            for before, t in zip([ts[0]] + ts, ts):
                if reset_at_hand_over and t < 32 <= before: smp.reset()  # forget x̂_0 of the other expert
                model = high if t >= 32 else low
                x = smp.step(model(x, torch.full((n,), t)).float(), t, x).prev_sample
        return x
    assert torch.equal(got, by_hand(False))
    assert (got - by_hand(True)).abs().max() > 1e-3                       # a reset at the hand-over would show
    for alone in (low, high): assert (got - sample_run(run, n, 'dpm++', steps=8, seed=seed, model=alone)).abs().max() > 1e-3


# --- the fine-tuning tree ---

def test_plan_experts_shares_the_steps_by_level_and_links_each_node_to_its_parent():
    one = plan_experts(1000, 1, 100)
    assert [(n['folder'], n['timesteps'], n['parent'], n['steps']) for n in one] == [('t0000-1000', [0, 1000], 'base', 100)]
    for experts, levels in ((2, 1), (4, 2), (8, 3)):
        nodes = plan_experts(1000, experts, 240, seed=7)
        assert len(nodes) == sum(2 ** k for k in range(1, levels + 1))    # 2, 2 + 4, 2 + 4 + 8
        assert sum(n['steps'] for n in nodes) <= 240
        for level in range(1, levels + 1):
            row = [n for n in nodes if n['level'] == level]
            assert [tuple(n['timesteps']) for n in row] == tree_ranges(1000, levels)[level]
            assert len({n['steps'] for n in row}) == 1                    # equal within a level
            assert sum(n['steps'] for n in row) == 240 // levels         # an equal share for each level
            for n in row:
                if level == 1: assert n['parent'] == 'base'
                else:
                    parent = next(p for p in nodes if p['folder'] == n['parent'])
                    assert parent['level'] == level - 1
                    assert parent['timesteps'][0] <= n['timesteps'][0] and n['timesteps'][1] <= parent['timesteps'][1]
        assert len({n['seed'] for n in nodes}) == len(nodes) and 7 not in {n['seed'] for n in nodes}
        assert [n['level'] for n in nodes] == sorted(n['level'] for n in nodes)   # parents train before their children
    assert [n['parent'] for n in plan_experts(1000, 4, 100)[2:]] == ['t0000-0500'] * 2 + ['t0500-1000'] * 2
    for bad in (3, 6, 0, -2, True, 2.0):
        refused(lambda: plan_experts(1000, bad, 100), f'experts = {bad!r}', 'power of two')
    refused(lambda: plan_experts(4, 8, 100), '8 experts cannot split T = 4')
    refused(lambda: plan_experts(1000, 4, 7), '7 steps', 'give at least 8')
    message = refused(lambda: plan_experts(1000, 4, 3), '3 steps', 'give at least')
    enough = int(message.rsplit('give at least ', 1)[1].split()[0])
    assert plan_experts(1000, 4, enough)                                  # the number it names is enough


# --- training ---

def test_train_experts_writes_the_tree_each_expert_on_its_range(base, ensemble):
    out, start, drawn = ensemble
    assert sorted(p.name for p in out.iterdir()) == sorted(['base', ENSEMBLE_FILE] + FOLDERS)
    assert is_ensemble(out) and not is_ensemble(base)
    info = read_ensemble(out)
    assert [n['folder'] for n in info['tree']] == FOLDERS and info['T'] == T and info['steps'] == 8
    assert info['experts'] == [{'folder': f, 'timesteps': [lo, lo + 16]} for f, lo in zip(FOLDERS[2:], (0, 16, 32, 48))]
    assert 'timesteps' not in read_config(out / 'base')
    assert same_weights(load_file(out / 'base' / 'ema.safetensors'), load_file(base / 'ema.safetensors'))
    for node in info['tree']:
        d = out / node['folder']
        assert read_config(d)['timesteps'] == node['timesteps'] and checkpoint_step(checkpoints(d)[-1]) == node['steps']
        lo, hi = node['timesteps']
        t = torch.cat(drawn[node['folder']])
        assert len(t) == node['steps'] * 4 and lo <= int(t.min()) and int(t.max()) < hi, node['folder']   # t only in range
    assert int(torch.cat(drawn['t32-64']).max()) >= 48 and int(torch.cat(drawn['t00-32']).min()) < 16   # not a sub-range


def test_each_expert_starts_from_its_parents_weights(base, ensemble):
    out, start, _ = ensemble
    base_weights = load_run(out / 'base').model.state_dict()
    for node in read_ensemble(out)['tree']:
        parent = load_run(out / node['parent']).model.state_dict()        # the parent's EMA weights
        model, ema = start[node['folder']]
        assert same_weights(model, parent) and same_weights(ema, parent), node['folder']
        if node['level'] == 2: assert not same_weights(model, base_weights)   # the level above, not the base
        final = load_run(out / node['folder']).model.state_dict()
        torch.manual_seed(node['seed'])
        fresh = build_unet(UNET).state_dict()
        near = max((final[k] - parent[k]).abs().max().item() for k in final)
        far = max((final[k] - fresh[k]).abs().max().item() for k in final)
        assert 0 < near < 0.01 < 0.1 < far, (node['folder'], near, far)    # a few small steps from the parent


def test_load_ensemble_samples_with_every_sampler(ensemble):
    out, _, _ = ensemble
    run = load_ensemble(out)
    assert isinstance(run.model, ExpertEnsemble) and run.model.ranges == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert run.config['ensemble']['T'] == T and 'timesteps' not in run.config and run.image_size == 16
    for sampler, steps in (('ddpm', None), ('ddim', 8), ('dpm++', 8)):
        x = sample_run(run, 2, sampler, steps=steps, seed=0)
        assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()
        assert not torch.equal(x, sample_run(load_run(out / 'base'), 2, sampler, steps=steps, seed=0))   # the experts answer


def test_disk_keeps_one_expert_and_samples_as_memory(ensemble):
    out, _, _ = ensemble
    mem, disk = load_ensemble(out, keep='memory'), load_ensemble(out, keep='disk')
    assert mem.model.loads == 4 and disk.model.loads == 0 and disk.model.resident_bytes() == 0
    one = weight_bytes(load_run(out / 't00-16').model)
    assert mem.model.resident_bytes() == 4 * one
    for sampler, steps in (('ddpm', None), ('ddim', 8), ('dpm++', 8)):   # each visits all four ranges, high t to low
        loads = disk.model.loads
        a, b = sample_run(mem, 2, sampler, steps=steps, seed=3), sample_run(disk, 2, sampler, steps=steps, seed=3)
        assert torch.equal(a, b), sampler
        assert disk.model.loads - loads == 4, (sampler, disk.model.loads - loads)   # each expert read once per run
        assert disk.model.resident_bytes() == one
    assert mem.model.loads == 4                                          # memory: read once, when built
    folder = disk.model.folders[disk.model.active_index]
    assert folder.name == 't00-16'                                       # a run ends with the expert of the smallest t


@pytest.mark.parametrize('hard', [False, True], ids=['saved', 'killed'])
def test_an_interrupted_ensemble_resumes_exactly(base, ensemble, tmp_path, monkeypatch, hard):
    """Interrupted in the second expert: after its first checkpoint (Ctrl-C saves one), or killed before it saved any.
    resume_experts keeps the finished expert, resumes or restarts the broken one, and ends with the very same weights."""
    out, saves = tmp_path / 'ens', []
    real_save = Trainer.save_checkpoint
    def save(self):
        saves.append(self.run_dir.name)
        if hard and len(saves) >= 3: raise KeyboardInterrupt             # killed: no checkpoint of t32-64 at all
        path = real_save(self)
        if len(saves) == 3: raise KeyboardInterrupt
        return path
    monkeypatch.setattr(Trainer, 'save_checkpoint', save)
    with pytest.raises(KeyboardInterrupt): train_experts(base, out, **ENSEMBLE)
    monkeypatch.undo()
    assert saves[:3] == ['t00-32', 't00-32', 't32-64'] and not (out / 't00-16').exists()
    assert [checkpoint_step(c) for c in checkpoints(out / 't32-64')] == ([] if hard else [1])
    made = []
    class Watched(Trainer):
        def __init__(self, *a, resume_from=None, **kw):
            made.append((kw.get('run_dir', a[3] if len(a) > 3 else None), resume_from is not None))
            super().__init__(*a, resume_from=resume_from, **kw)
    monkeypatch.setattr('face_diffusion.experts.Trainer', Watched)
    resume_experts(out, device='cpu', progress=False)
    assert [(p.name, resumed) for p, resumed in made] == [('t32-64', not hard)] + [(f, False) for f in FOLDERS[2:]]
    reference = ensemble[0]
    for folder in FOLDERS:
        for name in ('model.safetensors', 'ema.safetensors'):
            assert same_weights(load_file(out / folder / name), load_file(reference / folder / name)), (folder, name)
    assert read_ensemble(out)['tree'] == read_ensemble(reference)['tree']


# --- folder safety ---

def test_train_experts_refuses_folders_it_did_not_write(base, tmp_path):
    small = dict(experts=1, steps=1, device='cpu', progress=False)
    user = tmp_path / 'user'
    user.mkdir(); (user / 'notes.txt').write_text('mine')
    refused(lambda: train_experts(base, user, **small), 'not an ensemble', 'nothing was deleted')
    assert [p.name for p in user.iterdir()] == ['notes.txt']
    out = tmp_path / 'ens'
    train_experts(base, out, **small)
    assert sorted(p.name for p in out.iterdir()) == ['base', ENSEMBLE_FILE, 't00-64']
    refused(lambda: train_experts(base, out, **small), 'holds an ensemble', '--overwrite')
    (out / 'notes.txt').write_text('mine')
    refused(lambda: train_experts(base, out, **small, overwrite=True), 'notes.txt', 'nothing was deleted')
    (out / 'notes.txt').unlink()
    (out / 'photos').mkdir()
    refused(lambda: train_experts(base, out, **small, overwrite=True), 'photos', 'nothing was deleted')
    (out / 'photos').rmdir()
    (out / 't00-64' / 'notes.txt').write_text('mine')                    # a user's file inside an expert's run folder
    refused(lambda: train_experts(base, out, **small, overwrite=True), 'notes.txt', 'nothing was deleted')
    assert (out / 't00-64' / 'notes.txt').read_text() == 'mine'
    (out / 't00-64' / 'notes.txt').unlink()
    assert sorted(p.name for p in out.iterdir()) == ['base', ENSEMBLE_FILE, 't00-64']
    train_experts(base, out, **{**small, 'experts': 2, 'steps': 2}, overwrite=True)   # replaces what it wrote
    assert sorted(p.name for p in out.iterdir()) == ['base', ENSEMBLE_FILE, 't00-32', 't32-64']
    assert len(read_ensemble(out)['experts']) == 2


def test_train_experts_refuses_bad_bases_and_settings_in_one_line(base, tmp_path):
    small = dict(experts=2, steps=2, device='cpu', progress=False)
    refused(lambda: train_experts(pretrained_dir('attributes'), tmp_path / 'a', **small), 'conditioned on attributes', 'unconditional')
    cold = tmp_path / 'cold'
    shutil.copytree(base, cold)
    cfg = json.loads((cold / 'config.json').read_text())
    (cold / 'config.json').write_text(json.dumps({**cfg, 'degradation': {'kind': 'blur', 'T': T}}))
    refused(lambda: train_experts(cold, tmp_path / 'b', **small), 'blur restoration network', 'unconditional')
    refused(lambda: train_experts(tmp_path / 'nowhere', tmp_path / 'c', **small), 'not a run folder', error=FileNotFoundError)
    refused(lambda: train_experts(base, tmp_path / 'd', **{**small, 'experts': 3}), 'power of two')
    refused(lambda: train_experts(base, tmp_path / 'e', **{**small, 'steps': 1}), 'give at least 2')
    refused(lambda: train_experts(base, tmp_path / 'f', **small, lr=-1.0), 'lr = -1.0')
    refused(lambda: train_experts(base, tmp_path / 'g', **small, precision='fp8'), 'fp8')
    for name in 'defg': assert not (tmp_path / name).exists(), name        # refused before anything is written


def test_a_damaged_ensemble_is_one_line(ensemble, tmp_path):
    src = ensemble[0]
    out = tmp_path / 'ens'
    shutil.copytree(src, out)
    info = json.loads((out / ENSEMBLE_FILE).read_text())
    def write(obj): (out / ENSEMBLE_FILE).write_text(obj if isinstance(obj, str) else json.dumps(obj))
    def both(*fragments, error=ValueError):
        refused(lambda: read_ensemble(out), *fragments, error=error)
        refused(lambda: load_ensemble(out), *fragments, error=error)
    write({**info, 'experts': [info['experts'][0]] + info['experts'][2:]})
    both('gap in the expert ranges', 't = 16 … 31')
    write({**info, 'experts': info['experts'] + [{'folder': 't00-32', 'timesteps': [0, 32]}]})
    both('overlap in the expert ranges')
    write('{"format": "face_diffusion ensemble", ')
    both('is damaged', 'not readable JSON')
    write({**info, 'format': 'something else'})
    both("no 'face_diffusion ensemble' marker")
    write([1, 2])
    both("no 'face_diffusion ensemble' marker")
    write({k: v for k, v in info.items() if k != 'experts'})
    both("lacks its experts' ranges")
    (out / ENSEMBLE_FILE).unlink()
    both('not an ensemble of experts', error=FileNotFoundError)
    assert not is_ensemble(out)
    write(info)
    cfg = read_config(out / 't16-32')
    (out / 't16-32' / 'config.json').write_text(json.dumps({**cfg, 'timesteps': [0, 64]}))
    refused(lambda: load_ensemble(out), 't16-32', 'timesteps [0, 64]', '[16, 32]')
    shutil.rmtree(out / 't16-32')
    refused(lambda: load_ensemble(out), 't16-32', 'missing', 'resume_experts', error=FileNotFoundError)


# --- the Trainer's timesteps= and init_weights= ---

def test_trainer_trains_on_its_timesteps_records_them_and_resumes_with_them(tmp_path, monkeypatch):
    d = tmp_path / 'run'
    for bad, shown in (((0, 65), '(0, 65)'), ((-1, 10), '(-1, 10)'), ((10, 10), '(10, 10)'), ((20, 10), '(20, 10)')):
        refused(lambda: tiny_trainer(d, timesteps=bad), f'timesteps = {shown}', 'within 0 … 64', '0 ≤ lo < hi ≤ T')
    refused(lambda: tiny_trainer(d, timesteps='ab'), 'give a range (lo, hi)')
    refused(lambda: tiny_trainer(d, timesteps=(1, 2, 3)), 'give a range (lo, hi)')
    assert not d.exists()                                                 # refused before anything is written
    drawn, real_q = [], training.q_sample
    monkeypatch.setattr(training, 'q_sample', lambda s, x0, t, noise=None: (drawn.append(t.clone()), real_q(s, x0, t, noise=noise))[1])
    tiny_trainer(d, steps=4, timesteps=(20, 23)).fit(max_steps=2)
    t = torch.cat(drawn)
    assert len(t) == 8 and set(t.tolist()) <= {20, 21, 22} and len(set(t.tolist())) > 1
    assert read_config(d)['timesteps'] == [20, 23]
    ckpt = checkpoints(d)[-1]
    refused(lambda: tiny_trainer(d, steps=4, timesteps=(0, 64), resume_from=ckpt), 'trains on timesteps [20, 23], not [0, 64]')
    refused(lambda: tiny_trainer(d, steps=4, resume_from=ckpt), 'trains on timesteps [20, 23], not all')
    drawn.clear()
    resumed = Trainer.resume(d, device='cpu', progress=False)
    assert resumed.timesteps == (20, 23) and resumed.step == 2
    resumed.fit()
    assert len(drawn) == 2 and set(torch.cat(drawn).tolist()) <= {20, 21, 22}
    straight = tmp_path / 'straight'
    tiny_trainer(straight, steps=4, timesteps=(20, 23)).fit()
    assert same_weights(load_file(d / 'ema.safetensors'), load_file(straight / 'ema.safetensors'))
    everything = tmp_path / 'all'
    tiny_trainer(everything).fit()
    assert 'timesteps' not in read_config(everything)
    refused(lambda: tiny_trainer(everything, timesteps=(0, 32), resume_from=checkpoints(everything)[-1]),
            'trains on timesteps all, not [0, 32]')


def test_trainer_starts_from_init_weights(base, tmp_path):
    weights = load_run(base).model.state_dict()
    tr = tiny_trainer(tmp_path / 'run', init_weights=weights)
    assert same_weights(tr.model.state_dict(), weights) and same_weights(tr.ema.module.state_dict(), weights)
    tr.fit()
    assert not same_weights(load_run(tmp_path / 'run').model.state_dict(), weights)   # and trains from there
    other = build_unet(UNetConfig.preset('tiny', image_size=16, base_channels=16)).state_dict()
    refused(lambda: tiny_trainer(tmp_path / 'other', init_weights=other), 'initial weights do not fit this U-Net')
    refused(lambda: tiny_trainer(tmp_path / 'fewer', init_weights=dict(list(weights.items())[1:])), 'do not fit', 'missing')
