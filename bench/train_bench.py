"""Speed, measured side by side: the project's training step and DDIM sampling against two anchors.

In one process, on one device, for each model:
  params, forward GFLOP per image (torch.utils.flop_counter.FlopCounterMode, one image at the benchmark size),
  training images/s (noise + forward + loss + backward + optimizer + EMA, data resident on the device as uint8),
  peak memory of the training step (torch.cuda.max_memory_allocated; 'n/a' off CUDA),
  DDIM sampling images/s, model-FLOPs utilisation (MFU) against --peak-tflops,
  and the project's ratios to each anchor row.

Anchors (benchmark-only extras, `pip install -e ".[bench]"`):
  lucidrains  denoising-diffusion-pytorch: Unet(dim=64, dim_mults=(1, 2, 4, 8)) in GaussianDiffusion, its defaults
  diffusers   UNet2DModel with the configuration of diffusers' examples/unconditional_image_generation/
              train_unconditional.py (block_out_channels=(128, 128, 256, 256, 512, 512), layers_per_block=2,
              attention in the 5th down block and the 2nd up block), DDPMScheduler / DDIMScheduler
A missing anchor is skipped with one line saying what to install.

    python -m bench.train_bench --tiny                       # CPU smoke run, seconds
    python -m bench.train_bench --device cuda --precision bf16 --compile --channels-last \\
        --anchor-settings fp32,bf16,fp32+compile             # the GPU comparison (see bench/README.md)
"""
import argparse, contextlib, dataclasses, gc, json, os, platform, sys, tempfile, time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the libraries' sampling loops print progress bars; keep the table clean
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

H200_BF16_TFLOPS = 790.0  # the project's working figure for the H200's dense bf16 peak (DESIGN.md); not measured here
MODELS = ("project", "lucidrains", "diffusers")


class Skip(Exception):
    "A model that cannot run here (package missing); the message is the one line printed instead of its row."


# ----------------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class Setting:
    "How a model is run: precision, torch.compile, channels-last memory format."
    precision: str = "fp32"
    compile: bool = False
    channels_last: bool = False

    @property
    def label(self):
        return "+".join([self.precision] + (["compile"] if self.compile else []) + (["cl"] if self.channels_last else []))

    @classmethod
    def parse(cls, text):
        "'bf16+compile+cl' → Setting('bf16', True, True)."
        parts = [p.strip() for p in text.split("+") if p.strip()]
        if not parts or parts[0] not in ("fp32", "bf16"):
            raise ValueError(f"anchor setting {text!r} must start with fp32 or bf16, e.g. fp32, bf16+compile, bf16+compile+cl")
        unknown = set(parts[1:]) - {"compile", "cl"}
        if unknown:
            raise ValueError(f"anchor setting {text!r} has unknown part(s) {sorted(unknown)}; use +compile and/or +cl")
        return cls(parts[0], "compile" in parts, "cl" in parts)


def autocast(device, setting):
    "bf16 autocast, or nothing (fp32; TF32 matmuls on CUDA, see main)."
    if setting.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def maybe_compile(module, setting):
    return torch.compile(module) if setting.compile else module


def fmt_layout(x, setting):
    return x.contiguous(memory_format=torch.channels_last) if setting.channels_last else x


def lerp_ema(ema_params, params, decay):
    "The cheapest EMA there is, given to the anchors so every row pays for an EMA: ema ← ema + (1−decay)(θ − ema)."
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


# ----------------------------------------------------------------------------------------------- contenders
@dataclasses.dataclass
class Contender:
    "One model under test: the bare network (for params and FLOPs) and closures for one training step and sampling."
    name: str
    net: torch.nn.Module          # the denoising network, uncompiled
    describe: str                 # the configuration, in a few words
    train_step: callable          # runs one full training step on the benchmark batch
    sample: callable              # sample(n) -> images, DDIM with the benchmark's number of steps


def random_batch(args, device):
    "A uint8 batch resident on the device (speed does not depend on what the pixels show)."
    g = torch.Generator(device="cpu").manual_seed(0)
    return torch.randint(0, 256, (args.batch, 3, args.size, args.size), generator=g, dtype=torch.uint8).to(device)


def build_project(args, setting, device, workdir):
    "The project's own Trainer.train_step (batch from uint8 data on the device, flips, loss, AdamW, clipping, EMA)."
    try:
        from face_diffusion.unet import UNetConfig
        from face_diffusion.training import TrainConfig, Trainer, autocast as project_autocast
        if args.ddim_steps: from face_diffusion.sampling import DDIMSampler, sample
    except ImportError as e:
        raise Skip(f"project: skipped, the package is incomplete here ({e})")
    config = UNetConfig.preset(args.preset, image_size=args.size)
    train = TrainConfig(batch_size=args.batch, precision=setting.precision, compile=setting.compile,
                        channels_last=setting.channels_last)   # everything else: the project's defaults
    images = random_batch(args, "cpu").repeat(2, 1, 1, 1)       # the trainer keeps them on the device as uint8
    trainer = Trainer(config, train, images, workdir / f"project_{setting.label}", overwrite=True, device=device,
                      progress=False)
    trainer.model.train()                                       # train_step is public and needs nothing else set up

    ema_model = maybe_compile(trainer.ema.module, setting)      # sampling uses the EMA weights, as load_run does
    sampler = DDIMSampler(trainer.schedule, objective=train.objective, steps=args.ddim_steps) if args.ddim_steps else None
    def sample_fn(n):
        with project_autocast(trainer.precision, device):
            return sample(ema_model, sampler, n, args.size, generator=torch.Generator(device=device).manual_seed(0),
                          device=device)

    describe = (f"UNetConfig.preset({args.preset!r}), Trainer.train_step: {train.objective}-pred, {train.schedule} schedule, "
                f"fused AdamW, grad clip {train.grad_clip}, EMA")
    return Contender("project", trainer.model, describe, trainer.train_step, sample_fn)


def build_lucidrains(args, setting, device, workdir=None):
    try:
        from denoising_diffusion_pytorch import Unet, GaussianDiffusion
    except ImportError:
        raise Skip("lucidrains: skipped, denoising-diffusion-pytorch is not installed (pip install -e \".[bench]\")")
    shape = dict(dim=8, dim_mults=(1, 2), attn_dim_head=8, attn_heads=2) if args.tiny else dict(dim=64, dim_mults=(1, 2, 4, 8))
    net = Unet(**shape)
    net = net.to(device)
    if setting.channels_last: net = net.to(memory_format=torch.channels_last)
    # Its defaults: v-prediction, sigmoid schedule, T = 1000; DDIM when sampling_timesteps < timesteps.
    diffusion = GaussianDiffusion(net, image_size=args.size, timesteps=1000, sampling_timesteps=args.ddim_steps).to(device)
    diffusion.model = maybe_compile(net, setting)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.99))  # its Trainer's optimizer
    ema_params = [p.detach().clone() for p in net.parameters()]
    data = random_batch(args, device)

    def train_step():
        img = fmt_layout(data.float() / 255, setting)  # it normalises [0, 1] → [-1, 1] itself
        with autocast(device, setting):
            loss = diffusion(img)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad(): lerp_ema(ema_params, list(net.parameters()), 0.995)

    def sample_fn(n):
        with autocast(device, setting):
            return diffusion.sample(batch_size=n)

    describe = f"Unet({', '.join(f'{k}={v}' for k, v in shape.items())}), GaussianDiffusion defaults (v-pred, sigmoid), Adam, EMA (lerp)"
    return Contender("lucidrains", net, describe, train_step, sample_fn)


def build_diffusers(args, setting, device, workdir=None):
    try:
        from diffusers import UNet2DModel, DDPMScheduler, DDIMScheduler
    except ImportError:
        raise Skip("diffusers: skipped, diffusers is not installed (pip install -e \".[bench]\")")
    if args.tiny:
        net = UNet2DModel(sample_size=args.size, in_channels=3, out_channels=3, layers_per_block=1,
                          block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=8,
                          down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    else:  # examples/unconditional_image_generation/train_unconditional.py
        net = UNet2DModel(sample_size=args.size, in_channels=3, out_channels=3, layers_per_block=2,
                          block_out_channels=(128, 128, 256, 256, 512, 512),
                          down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"))
    net = net.to(device)
    if setting.channels_last: net = net.to(memory_format=torch.channels_last)
    fwd = maybe_compile(net, setting)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")  # the example's defaults (ε-pred)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    ema_params = [p.detach().clone() for p in net.parameters()]
    data, gen = random_batch(args, device), torch.Generator(device=device).manual_seed(0)

    def train_step():
        clean = fmt_layout(data.float() / 127.5 - 1, setting)
        noise = torch.randn(clean.shape, generator=gen, device=device)
        t = torch.randint(0, 1000, (clean.shape[0],), generator=gen, device=device)
        noisy = noise_scheduler.add_noise(clean, noise, t)
        with autocast(device, setting):
            pred = fwd(noisy, t).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad(): lerp_ema(ema_params, list(net.parameters()), 0.9999)

    ddim = DDIMScheduler.from_config(noise_scheduler.config)
    @torch.inference_mode()
    def sample_fn(n):  # what DDIMPipeline does, eta = 0
        ddim.set_timesteps(args.ddim_steps)
        x = torch.randn((n, 3, args.size, args.size), generator=gen, device=device)
        with autocast(device, setting):
            for t in ddim.timesteps:
                x = ddim.step(fwd(x, t).sample, t, x).prev_sample
        return x

    describe = ("UNet2DModel as train_unconditional.py (128,128,256,256,512,512), eps-pred, AdamW, EMA (lerp)"
                if not args.tiny else "UNet2DModel(block_out_channels=(16, 32)), tiny, eps-pred, AdamW, EMA (lerp)")
    return Contender("diffusers", net, describe, train_step, sample_fn)


BUILDERS = {"project": build_project, "lucidrains": build_lucidrains, "diffusers": build_diffusers}


# ----------------------------------------------------------------------------------------------- measuring
def sync(device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def seconds_per_call(fn, warmup, iters, device):
    "Mean wall time of fn() after warm-up calls (which also trigger torch.compile), synchronising the device."
    for _ in range(warmup): fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters): fn()
    sync(device)
    return (time.perf_counter() - start) / iters


def forward_gflop(net, size, device):
    "Forward FLOPs for one image at `size`, fp32, counted by FlopCounterMode (convolutions, matmuls, attention)."
    x = torch.randn(1, 3, size, size, device=device)
    t = torch.full((1,), 500, device=device, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(x, t)
    return counter.get_total_flops() / 1e9


def measure(name, setting, args, device, workdir):
    "One row of the table, or a Skip."
    contender = BUILDERS[name](args, setting, device, workdir)
    row = dict(model=name, setting=setting.label, config=contender.describe,
               params_m=sum(p.numel() for p in contender.net.parameters()) / 1e6,
               gflop=forward_gflop(contender.net, args.size, device))
    if device.type == "cuda":
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(device)
    row["train_ips"] = args.batch / seconds_per_call(contender.train_step, args.warmup, args.steps, device)
    row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    if args.ddim_steps > 0:
        row["sample_ips"] = args.sample_batch / seconds_per_call(lambda: contender.sample(args.sample_batch),
                                                                 args.sample_warmup, args.sample_repeats, device)
    else:
        row["sample_ips"] = None
    del contender
    gc.collect()
    if device.type == "cuda": torch.cuda.empty_cache()
    return row


def add_mfu(row, args):
    "Model-FLOPs utilisation: training counts 3 × forward FLOPs (forward + backward), sampling one forward per step."
    peak = args.peak_tflops
    row["train_mfu"] = 3 * row["gflop"] * row["train_ips"] / (peak * 1e3) if peak else None
    row["sample_mfu"] = (args.ddim_steps * row["gflop"] * row["sample_ips"] / (peak * 1e3)
                         if peak and row["sample_ips"] else None)
    return row


def ratios(project, anchor):
    "Project ÷ anchor: images/s, and the same at matched FLOPs (achieved model FLOP/s: img/s × GFLOP/img)."
    def div(a, b): return a / b if a and b else None
    return dict(anchor=anchor["model"], setting=anchor["setting"],
                train_ips=div(project["train_ips"], anchor["train_ips"]),
                train_flops=div(project["train_ips"] * project["gflop"], anchor["train_ips"] * anchor["gflop"]),
                sample_ips=div(project["sample_ips"], anchor["sample_ips"]),
                sample_flops=div(project["sample_ips"] and project["sample_ips"] * project["gflop"],
                                 anchor["sample_ips"] and anchor["sample_ips"] * anchor["gflop"]))


# ----------------------------------------------------------------------------------------------- quality
def quality_rows(args, device, workdir):
    """Speed-ups must keep quality: train the project's model for --quality-steps on synthetic faces twice, eager fp32
    and with the project's settings (same seed, same data), then SWD of DDIM samples as a multiple of the real floor."""
    from face_diffusion.data import synthetic_faces
    from face_diffusion.training import TrainConfig, Trainer, autocast as project_autocast
    from face_diffusion.sampling import DDIMSampler, sample
    from face_diffusion.metrics import swd_multiple
    from face_diffusion.unet import UNetConfig
    n_held = 2 * args.quality_samples                               # the floor averages two held-out draws
    faces = synthetic_faces(args.quality_images + n_held, size=args.size, seed=1)[0]
    train, held = faces[:args.quality_images], faces[args.quality_images:]
    rows = []
    for setting in dict.fromkeys([Setting("fp32"), args.project_setting]):   # baseline first; once if they agree
        config = UNetConfig.preset(args.preset, image_size=args.size)
        tc = TrainConfig(batch_size=args.batch, steps=args.quality_steps, precision=setting.precision,
                         compile=setting.compile, channels_last=setting.channels_last, sample_every=0,
                         save_every=args.quality_steps, log_every=max(1, args.quality_steps // 10),
                         warmup_steps=min(200, args.quality_steps // 10))
        trainer = Trainer(config, tc, train, workdir / f"quality_{setting.label}", overwrite=True, device=device, progress=False)
        sync(device); start = time.perf_counter()
        trainer.fit()
        sync(device); seconds = time.perf_counter() - start
        sampler = DDIMSampler(trainer.schedule, objective=tc.objective, steps=50)
        with project_autocast(trainer.precision, device):
            samples = torch.cat([sample(trainer.ema.module, sampler, n, args.size, device=device,
                                        generator=torch.Generator(device=device).manual_seed(i))
                                 for i, n in enumerate(chunks(args.quality_samples, args.sample_batch))]).float().cpu()
        rows.append(dict(setting=setting.label, steps=args.quality_steps, seconds=seconds,
                         swd=swd_multiple(samples.clamp(-1, 1), train, held, n=args.quality_samples)))
        del trainer; gc.collect()
        if device.type == "cuda": torch.cuda.empty_cache()
    return rows


def chunks(n, size):
    return [min(size, n - i) for i in range(0, n, size)]


# ----------------------------------------------------------------------------------------------- report
def cell(v, spec):
    return "n/a" if v is None else format(v, spec)


def table(headers, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def targets(project, results, args):
    "The issue's targets for the project's default model, judged only on a GPU run at full size."
    out = []
    def best(pred):
        rows = [r for r in results if r["model"] == "lucidrains" and pred(r)]
        return max(rows, key=lambda r: r["train_ips"]) if rows else None
    def verdict(ok): return "met" if ok else "NOT met"
    eager, compiled = best(lambda r: "compile" not in r["setting"]), best(lambda r: "compile" in r["setting"])
    for label, anchor, need in (("lucidrains eager", eager, 5), ("lucidrains compiled", compiled, 2)):
        if anchor is None: out.append(f"  training >= {need}x {label}: n/a (no such row; see --anchor-settings)"); continue
        r = ratios(project, anchor)
        out.append(f"  training >= {need}x {label} [{anchor['setting']}] at matched FLOPs: {r['train_flops']:.2f}x -> {verdict(r['train_flops'] >= need)}"
                   f" (plain img/s: {r['train_ips']:.2f}x)")
    mfu = project.get("train_mfu")
    out.append(f"  training MFU >= 30%: " + ("n/a (no peak)" if mfu is None else f"{100 * mfu:.1f}% -> {verdict(mfu >= 0.30)}"))
    gib = project.get("peak_gib")
    at64 = "" if args.batch == 64 else f" (measured at batch {args.batch}, the target is at batch 64)"
    out.append(f"  peak memory <= 6 GiB at batch 64: " + ("n/a" if gib is None else f"{gib:.2f} GiB -> {verdict(gib <= 6)}{at64}"))
    samplers = [r for r in results if r["model"] == "lucidrains" and r["sample_ips"]]
    if samplers and project["sample_ips"]:
        anchor = max(samplers, key=lambda r: r["sample_ips"])
        r = ratios(project, anchor)
        out.append(f"  DDIM sampling >= 5x lucidrains [{anchor['setting']}]: {r['sample_ips']:.2f}x img/s -> {verdict(r['sample_ips'] >= 5)}"
                   f" (matched FLOPs: {r['sample_flops']:.2f}x)")
    else:
        out.append("  DDIM sampling >= 5x lucidrains: n/a")
    return out


def report(results, skipped, args, device, quality=()):
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, torch threads: {torch.get_num_threads()})"
    peak = f"{args.peak_tflops:g} TFLOP/s ({args.peak_source})" if args.peak_tflops else "none given -> MFU n/a"
    lines = [f"face_diffusion benchmark: {dev}, torch {torch.__version__}",
             f"image {args.size}px, train batch {args.batch}, {args.steps} timed steps after {args.warmup} warm-up; "
             + (f"DDIM-{args.ddim_steps} sampling batch {args.sample_batch}, {args.sample_repeats} timed after {args.sample_warmup} warm-up"
              if args.ddim_steps else "sampling skipped (--ddim-steps 0)"),
             f"peak for MFU: {peak}",
             "training step = noise + forward + loss + backward + optimizer + EMA; fp32 runs use TF32 matmuls on CUDA",
             ""]
    headers = ["model", "setting", "params M", "fwd GFLOP/img", "train img/s", "train MFU", "peak GiB",
               f"DDIM-{args.ddim_steps} img/s", "sample MFU"]
    rows = [[r["model"], r["setting"], f"{r['params_m']:.2f}", f"{r['gflop']:.3f}", f"{r['train_ips']:.1f}",
             cell(r["train_mfu"] and 100 * r["train_mfu"], ".1f") + ("%" if r["train_mfu"] else ""),
             cell(r["peak_gib"], ".2f"), cell(r["sample_ips"], ".1f"),
             cell(r["sample_mfu"] and 100 * r["sample_mfu"], ".1f") + ("%" if r["sample_mfu"] else "")] for r in results]
    lines.append(table(headers, rows) if rows else "(no model ran)")
    lines += [f"  {r['model']}: {r['config']}" for r in results]
    lines += skipped
    project = next((r for r in results if r["model"] == "project"), None)
    anchors = [r for r in results if r["model"] != "project"]
    lines.append("")
    if project and anchors:
        lines.append(f"ratios, project [{project['setting']}] / anchor: img/s, and at matched FLOPs = (img/s x fwd GFLOP/img) / same for "
                     "the anchor, i.e. achieved model FLOP/s, as if both models cost the same FLOPs per image")
        rr = [ratios(project, a) for a in anchors]
        lines.append(table(["anchor", "setting", "train img/s x", "train matched-FLOPs x", "DDIM img/s x", "DDIM matched-FLOPs x"],
                           [[r["anchor"], r["setting"], cell(r["train_ips"], ".2f"), cell(r["train_flops"], ".2f"),
                             cell(r["sample_ips"], ".2f"), cell(r["sample_flops"], ".2f")] for r in rr]))
    else:
        lines.append("ratios: n/a (need the project and at least one anchor)")
    if quality:
        lines += ["", f"quality kept by the speed-ups: {args.quality_steps} training steps on {args.quality_images} synthetic faces "
                      f"(seed 1), SWD of {args.quality_samples} DDIM-50 samples as a multiple of the real-vs-real floor (1 = as real)"]
        lines.append(table(["setting", "steps", "train s", "SWD x floor"],
                           [[q["setting"], str(q["steps"]), f"{q['seconds']:.1f}", f"{q['swd']:.2f}"] for q in quality]))
    lines.append("")
    if project and device.type == "cuda" and not args.tiny:
        lines.append("targets (issue 8, project's default model):")
        lines += targets(project, results, args)
    else:
        lines.append("targets (issue 8): not judged, they are for a full-size run on a CUDA GPU")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- command line
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.train_bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default 64; --tiny: 4)")
    p.add_argument("--size", type=int, default=None, help="image size in pixels (default 64; --tiny: 32)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 20; --tiny: 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up training steps (default 5, 10 with --compile; --tiny: 1)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16", help="the project's precision (default bf16)")
    p.add_argument("--compile", action="store_true", help="torch.compile the project's model")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for the project's model")
    p.add_argument("--anchor-settings", default="same",
                   help="comma list of anchor settings, each fp32|bf16 with optional +compile and +cl, "
                        "e.g. fp32,bf16,fp32+compile; 'same' = the project's (default)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list from {', '.join(MODELS)}")
    p.add_argument("--preset", default=None, help="the project's UNetConfig preset (default faces64; --tiny: tiny)")
    p.add_argument("--ddim-steps", type=int, default=None, help="DDIM steps when sampling; 0 skips sampling (default 50; --tiny: 10)")
    p.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default 256; --tiny: 2)")
    p.add_argument("--sample-warmup", type=int, default=1, help="untimed sampling runs first (default 1)")
    p.add_argument("--sample-repeats", type=int, default=1, help="timed sampling runs (default 1)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help=f"the device's dense bf16 peak for MFU (default on CUDA: {H200_BF16_TFLOPS:g}, the H200 figure; none on CPU)")
    p.add_argument("--quality-steps", type=int, default=0,
                   help="also train the project's model this many steps eager fp32 and with its settings, and compare "
                        "the SWD of their samples (0: off; e.g. 3000 on a GPU)")
    p.add_argument("--quality-images", type=int, default=None, help="synthetic training faces for --quality-steps (default 10000; --tiny: 64)")
    p.add_argument("--quality-samples", type=int, default=None, help="samples and held-out faces for the SWD (default 1000; --tiny: 8)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's; --tiny on CPU: 1)")
    p.add_argument("--tiny", action="store_true", help="tiny models and sizes: a CPU smoke run in seconds")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    tiny = args.tiny
    for name, full, small in (("batch", 64, 4), ("size", 64, 32), ("steps", 20, 2), ("sample_batch", 256, 2), ("ddim_steps", 50, 10),
                              ("quality_images", 10_000, 64), ("quality_samples", 1000, 8),
                              ("preset", "faces64", "tiny")):
        if getattr(args, name) is None: setattr(args, name, small if tiny else full)
    if args.warmup is None: args.warmup = 1 if tiny else (10 if args.compile else 5)
    if args.quality_steps < 0: p.error("--quality-steps must be 0 (off) or more")
    for name in ("batch", "steps", "sample_batch", "sample_repeats", "quality_images", "quality_samples"):
        if getattr(args, name) < 1: p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.size < 16 or args.size % 8: p.error(f"--size {args.size} must be a multiple of 8, at least 16 (e.g. 32 or 64)")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if bad := [m for m in args.models if m not in MODELS]:
        p.error(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(MODELS)}")
    project = Setting(args.precision, args.compile, args.channels_last)
    try:
        args.anchor_settings = ([project] if args.anchor_settings == "same"
                                else [Setting.parse(s) for s in args.anchor_settings.split(",") if s.strip()])
    except ValueError as e:
        p.error(str(e))
    args.project_setting = project
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if not torch.cuda.is_available(): sys.exit("python -m bench.train_bench: error: --device cuda but no CUDA GPU is visible")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # "fp32" = TF32 matmuls, as usual on GPUs
        torch.backends.cudnn.benchmark = True
    if device.type == "cpu" and (args.threads or args.tiny):
        torch.set_num_threads(args.threads or 1)  # tiny models gain nothing from threads, and a shared CPU loses a lot
    if args.peak_tflops is not None: args.peak_source = "--peak-tflops"
    elif device.type == "cuda":
        args.peak_tflops = H200_BF16_TFLOPS
        name = torch.cuda.get_device_name(device)
        args.peak_source = "dense bf16 peak assumed for an H200" + ("" if "H200" in name else f"; this is {name}: pass --peak-tflops")
    else: args.peak_source = ""
    torch.manual_seed(0)
    results, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="fd_bench_") as workdir:   # the project's run folder (config, no weights)
        for name in args.models:
            for setting in ([args.project_setting] if name == "project" else args.anchor_settings):
                try: results.append(add_mfu(measure(name, setting, args, device, Path(workdir)), args))
                except Skip as e:
                    skipped.append(str(e))
                    break
        quality = quality_rows(args, device, Path(workdir)) if args.quality_steps else []
    text = report(results, skipped, args, device, quality)
    print(text, flush=True)
    if args.json:
        with open(args.json, "w") as f: json.dump(dict(rows=results, skipped=skipped, quality=quality, report=text), f, indent=1)
    return results


if __name__ == "__main__":
    main()
