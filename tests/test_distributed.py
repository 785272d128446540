"""Tests of face_diffusion.distributed and of training on 2 processes (torchrun, gloo on the CPU): the same steps as one
process with the global batch, one writer, exact resume, stops and refusals on every process, a dead process."""
import contextlib, json, os, re, shutil, signal, socket, subprocess, sys, time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

import face_diffusion
from face_diffusion.conditioning import condition_from_config, conditioned_unet, make_condition
from face_diffusion.data import save_grid
from face_diffusion.distributed import (LAUNCH_VARIABLES, PeerLostError, RefusedOnMain, World, all_max, all_mean,
                                        current_world, gather_objects, is_peer_loss, launched_world, on_main,
                                        process_device, simulate_world, torchrun_command)
from face_diffusion.runs import DataSource, check_checkpoint, checkpoints, load_state, read_log
from face_diffusion.training import TrainConfig, Trainer
from face_diffusion.unet import UNetConfig
from one_line import one_line, pixels, refused, run_main

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason='torch.distributed with the gloo backend is not available')

TRAIN = ['train', '--model', 'tiny', '--size', '32', '--batch', '4', '--n-images', '64', '--device', 'cpu']
RESUME = r'torchrun --nproc-per-node 2 -m face_diffusion\.cli train --out (\S+) --resume'
BAR = re.compile(r'\d+%\|')                                          # tqdm's bars share stderr


def child_env(**extra) -> dict:
    "The environment of a child process: this package first on the path, one thread, no launch variables of ours."
    env = {k: v for k, v in os.environ.items() if k not in (*LAUNCH_VARIABLES, 'MASTER_ADDR', 'MASTER_PORT', 'LOCAL_WORLD_SIZE')}
    package_root = str(Path(face_diffusion.__file__).resolve().parents[1])
    env['PYTHONPATH'] = os.pathsep.join(p for p in (package_root, env.get('PYTHONPATH')) if p)
    return {**env, 'OMP_NUM_THREADS': '1', **extra}


def torchrun(*args, cwd, timeout=300) -> subprocess.CompletedProcess:
    "`torchrun --standalone --nproc-per-node 2 -m face_diffusion.cli ARGS` (standalone: a free port of its own)."
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2',
                           '-m', 'face_diffusion.cli', *map(str, args)], cwd=cwd, env=child_env(),
                          capture_output=True, text=True, timeout=timeout)


def error_lines(text: str) -> list:
    return [l for l in text.splitlines() if l.startswith('face-diffusion: error')]


def said(text: str) -> list:
    "The lines of a stderr without tqdm's bars."
    return [l for l in text.strip().splitlines() if not BAR.search(l)]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].detach().cpu().float()).abs().max().item() for k in a)


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def wait_for_checkpoint(run_dir: Path, procs, timeout: float = 300):
    "Poll until the run has a complete checkpoint (no timing assumed beyond a generous deadline)."
    deadline = time.time() + timeout
    while not checkpoints(run_dir):
        for p in procs: assert p.poll() is None, f'a process ended early with status {p.returncode}'
        assert time.time() < deadline, 'no checkpoint was saved'
        time.sleep(0.2)
    return checkpoints(run_dir)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def two_ranks(args, cwd: Path):
    "Rank 0 and rank 1 of `face-diffusion ARGS`, launched by hand (so we hold each python pid); killed if left over."
    port, procs, files = free_port(), [], []
    try:
        for rank in range(2):
            env = child_env(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE='2',
                            LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE='2')
            out, err = open(cwd / f'rank{rank}.out', 'w'), open(cwd / f'rank{rank}.err', 'w')
            files += [out, err]
            procs.append(subprocess.Popen([sys.executable, '-m', 'face_diffusion.cli', *map(str, args)], cwd=cwd, env=env,
                                          stdout=out, stderr=err))
        yield procs
    finally:
        for p in procs:
            if p.poll() is None: p.kill(); p.wait()
        for f in files: f.close()


def read(cwd: Path, rank: int, stream: str) -> str:
    return (cwd / f'rank{rank}.{stream}').read_text()


@pytest.fixture(scope='module')
def ddp_run(tmp_path_factory):
    "A 2-process run: 6 steps of 4 images per process (a global batch of 8), checkpoints at steps 3 and 6."
    where = tmp_path_factory.mktemp('ddp')
    r = torchrun(*TRAIN, '--steps', 6, '--out', 'R', '--save-every', 3, '--sample-every', 6, cwd=where)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('trained to step 6') == 1, r.stdout              # rank 0 reports, once
    return where / 'R'


def reference(run_dir: Path, ref_dir: Path, condition=None, **train) -> Trainer:
    "A fresh 1-process Trainer with the settings of `run_dir` (changed by `train`)."
    cfg = json.loads((run_dir / 'config.json').read_text())
    tc = TrainConfig.from_dict({**cfg['train'], **train})
    return Trainer(cfg['unet'], tc, DataSource.from_dict(cfg['data']), ref_dir, device='cpu', progress=False, condition=condition)


# ---- the world, in one process ---------------------------------------------------------------------------------

def test_seeds_and_shards_of_the_ranks():
    assert World().seed(7) == World(0, 4).seed(7) == 7                    # rank 0 keeps the run seed
    seeds = {World(r, 8).seed(s) for r in range(8) for s in range(20)}
    assert len(seeds) == 8 * 20 and all(0 <= s < 2 ** 63 for s in seeds)  # every (seed, rank) its own stream
    assert World(3, 8).seed(5) == World(3, 4).seed(5)                      # a rank's stream: (seed, rank) only
    shards = [World(r, 3).shard(10).tolist() for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]                  # disjoint, covering, every 3rd one
    assert World().shard(5).tolist() == [0, 1, 2, 3, 4]
    refused(lambda: World(0, 4).shard(3), 'cannot be shared among 4 processes')
    assert World(0, 2).is_main and not World(1, 2).is_main and World(1, 2).distributed and not World().distributed


def test_the_world_torchrun_describes():
    assert launched_world({}) == World() and current_world() == World()     # no torchrun, no group: one process
    assert launched_world({'RANK': '1', 'WORLD_SIZE': '2', 'LOCAL_RANK': '1'}) == World(1, 2, 1)
    assert launched_world({'RANK': '5', 'WORLD_SIZE': '8', 'LOCAL_RANK': '1'}) == World(5, 8, 1)   # 2nd GPU of the 2nd machine
    assert launched_world({'RANK': '1', 'WORLD_SIZE': '2'}) == World(1, 2, 1)                   # LOCAL_RANK defaults to RANK
    refused(lambda: launched_world({'RANK': '2', 'WORLD_SIZE': '2', 'LOCAL_RANK': '0'}), 'not one of the WORLD_SIZE=2', 'torchrun')
    refused(lambda: launched_world({'RANK': 'x', 'WORLD_SIZE': '2'}), 'must be whole numbers', 'torchrun')
    refused(lambda: launched_world({'WORLD_SIZE': '2'}), 'must be whole numbers')
    assert process_device(World(1, 2, 1), 'cuda') == torch.device('cuda', 1)   # each process its own card
    assert process_device(World(1, 2, 1), 'cuda:0') == torch.device('cuda', 0)  # an explicit card stays
    assert process_device(World(1, 2, 1), 'cpu') == torch.device('cpu')
    assert process_device(World(), 'cuda') == torch.device('cuda')


def test_collectives_on_one_process():
    one, x = World(), torch.tensor([1.0, 5.0])
    assert all_mean(x, one) is x and all_max(x, one) is x
    assert gather_objects({'a': 1}, one) == [{'a': 1}]
    assert on_main(lambda: 42, one) == 42
    def refuse(): raise ValueError('no')
    with pytest.raises(ValueError) as e: on_main(refuse, one)
    assert type(e.value) is ValueError and str(e.value) == 'no'          # rank 0's own error, as it was
    assert issubclass(RefusedOnMain, ValueError) and issubclass(PeerLostError, RuntimeError)
    assert torchrun_command(2, 'train --out r --resume') == 'torchrun --nproc-per-node 2 -m face_diffusion.cli train --out r --resume'
    assert torchrun_command(1, 'train --out r --resume') == 'face-diffusion train --out r --resume'


def test_what_counts_as_a_lost_peer():
    assert is_peer_loss(RuntimeError('[../third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer'))
    assert is_peer_loss(dist.DistBackendError('NCCL watchdog timed out'))
    assert not is_peer_loss(RuntimeError('mat1 and mat2 shapes cannot be multiplied'))
    assert not is_peer_loss(ValueError('gloo'))


def test_simulate_world_needs_a_fresh_one_process_trainer(tmp_path):
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    uc = UNetConfig.from_dict(dict(UNetConfig.preset('tiny').to_dict(), image_size=16))
    tc = TrainConfig(steps=2, batch_size=2, warmup_steps=0, log_every=1, sample_every=0, save_every=10)
    trained = Trainer(uc, tc, images, tmp_path / 'run', device='cpu', progress=False).fit(max_steps=1)
    refused(lambda: simulate_world(trained, 2), 'fresh 1-process Trainer')
    refused(lambda: simulate_world(SimpleNamespace(world=World(0, 2), step=0), 2), 'fresh 1-process Trainer')


def test_a_condition_gets_the_labels_of_its_own_images(tmp_path):
    "Under the 2-rank simulation, the condition is asked for the global indices of the very images in the batch."
    source = DataSource('synthetic', 32, n=64)
    cond = make_condition('attributes', source)
    tc = TrainConfig(steps=1, batch_size=4, warmup_steps=0, log_every=1, sample_every=0, save_every=10, flip=False)
    unet = conditioned_unet(UNetConfig.preset('tiny', image_size=32), 32, cond)
    tr = simulate_world(Trainer(unet, tc, source, tmp_path / 'ref', device='cpu', progress=False, condition=cond), 2)
    images, seen = tr.images, []
    batch = cond.batch
    def spy(index, x0, generator):
        seen.append((index.clone(), x0.clone()))
        return batch(index, x0, generator)
    cond.batch = spy
    tr.fit(max_steps=1)
    assert len(seen) == 2                                                 # one micro-batch per simulated rank
    for rank, (index, x0) in enumerate(seen):
        assert (index % 2 == rank).all(), index                          # rank r's shard: images r, r+2, …
        assert torch.equal(images[index].float() / 127.5 - 1, x0)          # and these are the images it trains on


# ---- two processes ---------------------------------------------------------------------------------------------

def test_two_processes_take_the_steps_of_one_with_the_global_batch(ddp_run, tmp_path):
    simulated = simulate_world(reference(ddp_run, tmp_path / 'sim'), 2).fit()
    model, ema = load_file(ddp_run / 'model.safetensors'), load_file(ddp_run / 'ema.safetensors')
    assert max_diff(model, simulated.model.state_dict()) < 1e-6           # measured: 0.0
    assert max_diff(ema, simulated.ema.module.state_dict()) < 1e-6
    logged = [(r['step'], r['loss']) for r in read_log(ddp_run)]
    assert [s for s, _ in logged] == [r['step'] for r in simulated.history]
    assert [l for _, l in logged] == pytest.approx([r['loss'] for r in simulated.history], abs=1e-6)   # the global batch's loss
    grid = save_grid(simulated.sample().float().clamp(-1, 1), tmp_path / 'grid.png')   # the grid shows the run's EMA model
    assert (np.abs(pixels(grid).astype(int) - pixels(ddp_run / 'samples' / 'step_000006.png')) > 1).mean() < 1e-3   # measured: 0
    plain = reference(ddp_run, tmp_path / 'plain', batch_size=8).fit()   # one process, one stream, 8 images: not the same steps
    assert max_diff(model, plain.model.state_dict()) > 1e-4               # measured: about 5e-3


def test_only_rank_0_writes_the_run_folder(ddp_run):
    cfg = json.loads((ddp_run / 'config.json').read_text())
    assert cfg['world_size'] == 2 and cfg['global_batch'] == 8 and cfg['train']['batch_size'] == 4
    log = read_log(ddp_run)
    assert [r['step'] for r in log] == [1, 2, 3, 4, 5, 6]                   # one row per step, none twice
    assert log[-1]['epoch'] == pytest.approx(6 * 8 / 64)                    # images counted over both processes
    assert [p.name for p in checkpoints(ddp_run)] == ['step_000003', 'step_000006']
    assert sorted(p.name for p in (ddp_run / 'samples').iterdir()) == ['step_000006.png']
    assert not (ddp_run / 'train.lock').exists() and not [p for p in ddp_run.rglob('*') if '.tmp' in p.name]
    for ck in checkpoints(ddp_run):
        state = load_state(check_checkpoint(ck) / 'state.pt')
        ranks = state['rank_rng']
        assert len(ranks) == 2 and state['images_seen'] == 8 * state['step'] and state['ema']['num_updates'] == state['step']
        assert torch.equal(ranks[0]['generator'], state['rng']['generator'])      # rank 0's own streams
        assert not torch.equal(ranks[0]['generator'], ranks[1]['generator'])      # each rank its own stream


def test_resume_on_two_processes_is_exact(ddp_run, tmp_path):
    "Resumed from its step-3 checkpoint, the run ends as the uninterrupted one did: weights, EMA, optimizer, streams, log."
    run = shutil.copytree(ddp_run, tmp_path / 'R')
    shutil.rmtree(run / 'checkpoints' / 'step_000006')                  # as if it had stopped after step 3
    r = torchrun('train', '--out', run, '--resume', '--device', 'cpu', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('trained to step 6') == 1, r.stdout
    a, b = ddp_run / 'checkpoints' / 'step_000006', run / 'checkpoints' / 'step_000006'
    for name in ('model.safetensors', 'ema.safetensors'): assert max_diff(load_file(a / name), load_file(b / name)) == 0, name
    sa, sb = load_state(a / 'state.pt'), load_state(b / 'state.pt')
    assert (sa['step'], sa['images_seen'], sa['ema']) == (sb['step'], sb['images_seen'], sb['ema'])
    for k, v in sa['optimizer']['state'].items():
        assert all(torch.equal(v[n], sb['optimizer']['state'][k][n]) for n in v)
    for ra, rb in zip(sa['rank_rng'], sb['rank_rng'], strict=True):
        assert torch.equal(ra['generator'], rb['generator']) and torch.equal(ra['torch'], rb['torch'])
    assert [(x['step'], x['loss']) for x in read_log(run)] == [(x['step'], x['loss']) for x in read_log(ddp_run)]


def test_a_two_process_run_does_not_resume_on_one(ddp_run):
    before = snapshot(ddp_run)
    code, _, err = run_main('train', '--out', ddp_run, '--resume', '--device', 'cpu')
    one_line(code, err, 'trained on 2 process(es)', f'torchrun --nproc-per-node 2 -m face_diffusion.cli train --out {ddp_run} --resume')
    assert snapshot(ddp_run) == before


def test_a_one_process_run_does_not_resume_on_two(tmp_path):
    "Rank 0 refuses in one line; rank 1 learns it from rank 0 and stops quietly (torchrun would then add its own report)."
    code, _, err = run_main(*TRAIN, '--steps', 2, '--out', tmp_path / 'one')
    assert code == 0, err
    before = snapshot(tmp_path / 'one')
    with two_ranks(['train', '--out', 'one', '--resume', '--device', 'cpu'], tmp_path) as ranks:
        codes = [p.wait(timeout=180) for p in ranks]
    errs = [read(tmp_path, r, 'err') for r in (0, 1)]
    assert codes == [2, 2] and said(errs[1]) == [], errs
    lines = said(errs[0])
    assert len(lines) == 1, errs[0]
    assert lines[0].startswith('face-diffusion: error (process 0 of 2): run folder one was trained on 1 process(es)'), lines
    assert lines[0].endswith('resume it on as many: face-diffusion train --out one --resume'), lines
    assert snapshot(tmp_path / 'one') == before


def test_sigterm_to_torchrun_stops_both_at_one_step_with_a_checkpoint(tmp_path):
    args = [*TRAIN, '--steps', 100_000, '--save-every', 5, '--out', 'R']
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2', '-m', 'face_diffusion.cli', *map(str, args)]
    with open(tmp_path / 'out', 'w') as out, open(tmp_path / 'err', 'w') as err:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=child_env(), stdout=out, stderr=err)
        try:
            wait_for_checkpoint(tmp_path / 'R', [proc])
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=180)
        finally:
            if proc.poll() is None: proc.kill(); proc.wait()
    stdout, stderr = (tmp_path / 'out').read_text(), (tmp_path / 'err').read_text()
    stops = re.findall(rf'^SIGTERM at step (\d+): checkpoint saved to (\S+); resume with: ({RESUME})$', stdout, re.M)
    assert len(stops) == 1, (stdout, stderr[-3000:])                      # rank 0 says it, once
    assert not error_lines(stderr), stderr[-3000:]                        # no process lost the other
    step, path, command, out_dir = stops[0]
    step, run = int(step), tmp_path / 'R'
    assert Path(path) == Path(out_dir) / 'checkpoints' / f'step_{step:06d}' and out_dir == 'R'
    assert checkpoints(run)[-1].name == f'step_{step:06d}'
    state = load_state(check_checkpoint(checkpoints(run)[-1]) / 'state.pt')
    assert state['step'] == step and len(state['rank_rng']) == 2
    assert not (run / 'train.lock').exists()
    assert command == 'torchrun --nproc-per-node 2 -m face_diffusion.cli train --out R --resume'   # run as such in the exact-resume test


def test_a_signal_to_one_process_stops_both_at_the_same_step(tmp_path):
    with two_ranks([*TRAIN, '--steps', 100_000, '--save-every', 5, '--out', 'R'], tmp_path) as (rank0, rank1):
        wait_for_checkpoint(tmp_path / 'R', [rank0, rank1])
        rank1.send_signal(signal.SIGTERM)                                 # rank 0 gets no signal
        codes = rank0.wait(timeout=180), rank1.wait(timeout=180)
    assert codes == (128 + signal.SIGTERM, 128 + signal.SIGTERM), [read(tmp_path, r, 'err')[-2000:] for r in (0, 1)]
    stops = re.findall(r'^SIGTERM at step (\d+): checkpoint saved to (\S+);', read(tmp_path, 0, 'out'), re.M)
    assert len(stops) == 1 and read(tmp_path, 1, 'out') == '', read(tmp_path, 0, 'out')
    step = int(stops[0][0])
    last = checkpoints(tmp_path / 'R')[-1]
    assert last.name == f'step_{step:06d}' and load_state(check_checkpoint(last) / 'state.pt')['step'] == step
    assert not error_lines(read(tmp_path, 0, 'err') + read(tmp_path, 1, 'err'))


@pytest.mark.parametrize('dead', [1, 0])
def test_a_dead_process_stops_the_other_with_one_line(tmp_path, dead):
    with two_ranks([*TRAIN, '--steps', 100_000, '--save-every', 5, '--out', 'R'], tmp_path) as ranks:
        wait_for_checkpoint(tmp_path / 'R', ranks)
        ranks[dead].kill()                                                # SIGKILL: no goodbye
        code = ranks[1 - dead].wait(timeout=180)
    err = read(tmp_path, 1 - dead, 'err')
    lines = said(err)
    assert code == 2 and len(lines) == 1, err[-3000:]
    m = re.fullmatch(rf'face-diffusion: error \(process {1 - dead} of 2\): another training process stopped or cannot be '
                     rf'reached \((.+)\); this one stopped at step (\d+); last good checkpoint: (\S+); resume with: {RESUME}', lines[0])
    assert m, lines[0]
    stopped, last, out_dir = int(m[2]), Path(m[3]), m[4]
    assert out_dir == 'R' and last.parent == Path('R') / 'checkpoints', lines[0]
    assert last.name in [p.name for p in checkpoints(tmp_path / 'R')]     # a checkpoint that is there, and intact
    state = load_state(check_checkpoint(tmp_path / last) / 'state.pt')
    assert state['step'] <= stopped and state['step'] % 5 == 0 and len(state['rank_rng']) == 2
    if dead == 1: assert not (tmp_path / 'R' / 'train.lock').exists()    # rank 0 let go of its lock


def test_a_conditioned_run_on_two_processes_matches_its_simulation(tmp_path):
    "Labels are looked up by global index; and --epochs 1 is one pass over the 64 images, 8 steps of the global batch of 8."
    r = torchrun(*TRAIN, '--condition', 'attributes', '--epochs', 1, '--save-every', 8, '--sample-every', 8, '--out', 'R', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / 'R'
    cfg = json.loads((run / 'config.json').read_text())
    assert cfg['condition']['kind'] == 'attributes' and cfg['world_size'] == 2
    cond = condition_from_config(cfg['condition'], DataSource.from_dict(cfg['data']))
    simulated = simulate_world(reference(run, tmp_path / 'sim', cond), 2).fit()
    assert max_diff(load_file(run / 'model.safetensors'), simulated.model.state_dict()) < 1e-6
    assert max_diff(load_file(run / 'ema.safetensors'), simulated.ema.module.state_dict()) < 1e-6
    assert [x['loss'] for x in read_log(run)] == pytest.approx([x['loss'] for x in simulated.history], abs=1e-6)
    assert (read_log(run)[-1]['step'], read_log(run)[-1]['epoch']) == (8, 1.0)


# ---- the command line under torchrun's variables (refused before joining a group) ------------------------------

@pytest.mark.parametrize('rank', [0, 1])
def test_only_train_runs_on_several_processes(rank, tmp_path, monkeypatch):
    for k, v in zip(LAUNCH_VARIABLES, (rank, 2, rank)): monkeypatch.setenv(k, str(v))
    for args, words in ((['sample', '--out', tmp_path / 's.png'], 'only `face-diffusion train` runs on several processes; run '
                                                                   '`face-diffusion sample` without torchrun'),
                        (['train', '--experts', 2, '--from', 'bundled', '--out', tmp_path / 'e'],
                         'an ensemble of experts trains on one process; run it without torchrun')):
        code, out, err = run_main(*args)
        assert code == 2 and said(err) == [f'face-diffusion: error (process {rank} of 2): {words}'], err
    assert not dist.is_initialized() and not list(tmp_path.iterdir())     # no group joined, nothing written


def test_bad_launch_variables_are_one_line(monkeypatch):
    monkeypatch.setenv('RANK', 'x'); monkeypatch.setenv('WORLD_SIZE', '2')
    code, _, err = run_main('faces', '--n', 1)
    one_line(code, err, 'must be whole numbers', 'launch with torchrun')
