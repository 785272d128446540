"""Draw the overview figure of the README and nbs/index.ipynb: the diffusion chain on real data.

Top row: one synthetic face x_0 (the package's embedded data) noised by the package's own `q_sample`, left to right,
to x_T, pure noise: the forward process q, fixed, nothing learned. Bottom row, right to left: the bundled model's
reverse chain p_θ (ancestral DDPM sampling, one network call per step) from fresh noise x_T to a new face.
Columns share t. Under them, the training objective that teaches the network.

    python tools/overview_figure.py            # writes assets/diffusion_chain.png
    python tools/overview_figure.py OUT.png    # somewhere else
"""
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

ROOT = Path(__file__).resolve().parent.parent
SHOWN_T = (0, 150, 300, 500, 700, 999)      # the columns: the clean face, then timesteps (0-based, so 999 is the last, x_T)

def chains(face_seed: int = 3, noise_seed: int = 0, sample_seed: int = 4):
    "The forward row (64 px) and the reverse row (32 px, the bundled model's size), each a list of HxWx3 arrays in [0, 1]."
    from face_diffusion.data import to_float
    from face_diffusion.faces import synthetic_faces
    from face_diffusion.forward import q_sample
    from face_diffusion.runs import load_run, pretrained_dir
    from face_diffusion.sampling import DDPMSampler, sample

    run = load_run(pretrained_dir())                                   # the model that ships with the package
    sched = run.schedule                                               # its schedule (cosine, T = 1000)
    images, _ = synthetic_faces(face_seed + 1, size=64, seed=0)
    x0 = to_float(images[face_seed:face_seed + 1])                     # x_0 in [-1, 1], 1x3x64x64
    gen = torch.Generator().manual_seed(noise_seed)
    eps = torch.randn(x0.shape, generator=gen)                         # ε ~ N(0, I), one draw for every column
    forward = [x0] + [q_sample(sched, x0, t, noise=eps) for t in SHOWN_T[1:]]   # x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε

    kept = {}
    def keep(i, t, x_t, x0_hat):                                       # the sampler's x_t before its step at t
        if t in SHOWN_T: kept[t] = x_t.clone()
    smp = DDPMSampler(sched, run.objective)                            # x_{t−1} ~ p_θ(x_{t−1} | x_t), t = T−1 … 0
    x_final = sample(run.model, smp, 1, run.image_size, generator=torch.Generator().manual_seed(sample_seed), callback=keep)
    kept[0] = x_final                                                  # the last step returns x_0, the new face
    reverse = [kept[t] for t in SHOWN_T]
    as_img = lambda x: ((x[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).float().numpy()   # [-1, 1] → [0, 1], HWC
    return [as_img(x) for x in forward], [as_img(x) for x in reverse], sched

def draw(out: Path):
    fwd, rev, sched = chains()
    n, w, gap = len(SHOWN_T), 1.0, 0.55                                # image width, space for an arrow between images
    xs = [i * (w + gap) for i in range(n)]
    fig, ax = plt.subplots(figsize=(11.5, 5.4), dpi=110)
    ax.set_xlim(-0.75, xs[-1] + w + 0.25); ax.set_ylim(-1.25, 3.05); ax.set_aspect("equal"); ax.axis("off")
    y_top, y_bot = 1.55, 0.0
    for i, t in enumerate(SHOWN_T):
        ax.imshow(fwd[i], extent=(xs[i], xs[i] + w, y_top, y_top + w), interpolation="nearest")
        ax.imshow(rev[i], extent=(xs[i], xs[i] + w, y_bot, y_bot + w), interpolation="nearest")
        if i == 0: top, under = "$x_0$, a training face", "$x_0$, a new face"
        elif i == n - 1: top, under = f"$x_T$  $\\bar\\alpha$={float(sched.alphas_cumprod[t]):.4f}", "$x_T$, fresh noise"
        else: top, under = f"$x_{{{t}}}$  $\\bar\\alpha$={float(sched.alphas_cumprod[t]):.2f}", f"$x_{{{t}}}$"
        ax.text(xs[i] + w / 2, y_top + w + 0.08, top, ha="center", va="bottom", fontsize=9.5)
        ax.text(xs[i] + w / 2, y_bot - 0.06, under, ha="center", va="top", fontsize=9.5, color="0.25")
    for i in range(n - 1):                                             # arrows between neighbouring columns
        a, b = xs[i] + w + 0.06, xs[i + 1] - 0.06
        ax.annotate("", xy=(b, y_top + w / 2), xytext=(a, y_top + w / 2),
                    arrowprops=dict(arrowstyle="-|>", color="tab:blue", lw=1.8))
        ax.annotate("", xy=(a, y_bot + w / 2), xytext=(b, y_bot + w / 2),
                    arrowprops=dict(arrowstyle="-|>", color="tab:orange", lw=1.8))
        ax.text((a + b) / 2, y_top + w / 2 + 0.1, "q", color="tab:blue", ha="center", fontsize=11, style="italic")
        ax.text((a + b) / 2, y_bot + w / 2 + 0.1, r"$p_\theta$", color="tab:orange", ha="center", fontsize=11)
    ax.text(-0.1, y_top + w / 2, "forward\n(fixed)", ha="right", va="center", color="tab:blue", fontsize=10)
    ax.text(-0.1, y_bot + w / 2, "reverse\n(learned)", ha="right", va="center", color="tab:orange", fontsize=10)
    ax.text(xs[0], 2.85, r"forward: $q(x_t \mid x_{t-1}) = \mathcal{N}(\sqrt{1-\beta_t}\,x_{t-1},\ \beta_t I)$,"
            r"  in one jump $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$",
            color="tab:blue", fontsize=10.5, va="bottom")
    ax.text(xs[0], -0.55, r"reverse: $x_{t-1} \sim p_\theta(x_{t-1} \mid x_t)$, a Gaussian whose mean the network sets,"
            r" from $x_T \sim \mathcal{N}(0, I)$ down to a new face $x_0$", color="tab:orange", fontsize=10.5, va="top")
    ax.text(xs[0], -0.95, r"training: draw $x_0$, $t \sim \mathrm{Uniform}\{1, \ldots, T\}$, $\varepsilon \sim \mathcal{N}(0, I)$;  minimise "
            r"$\|\varepsilon - \varepsilon_\theta(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ t)\|^2$",
            color="black", fontsize=10.5, va="top")
    fig.savefig(out, bbox_inches="tight", pad_inches=0.05, facecolor="white")
    plt.close(fig)
    return out

if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "assets" / "diffusion_chain.png"
    print(f"wrote {draw(out)}")
