"""The speed benchmark (bench/train_bench.py) runs tiny on the CPU: its report has every column and ratio,
and an anchor whose package is missing is skipped with one clear line instead of failing the run."""
import subprocess, sys
from pathlib import Path
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import train_bench  # noqa: E402

COLUMNS = ["model", "setting", "params M", "fwd GFLOP/img", "train img/s", "train MFU", "peak GiB",
           "DDIM-3 img/s", "sample MFU"]
RATIO_COLUMNS = ["anchor", "train img/s x", "train matched-FLOPs x", "DDIM img/s x", "DDIM matched-FLOPs x"]
TINY = ["--tiny", "--device", "cpu", "--steps", "1", "--ddim-steps", "3", "--sample-batch", "1"]


def installed(module):
    try: __import__(module)
    except ImportError: return False
    return True


def row(out, model, after=None):
    "The first table row of `model` (after the line starting with `after`, if given), split into its cells."
    lines = out.splitlines()
    if after: lines = lines[next(i for i, line in enumerate(lines) if line.startswith(after)):]
    return next(line.split() for line in lines if line.startswith(model + " "))


def test_tiny_cpu_run_reports_every_column_and_ratio():
    r = subprocess.run([sys.executable, "-m", "bench.train_bench", *TINY, "--peak-tflops", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for column in COLUMNS + RATIO_COLUMNS: assert column in out, f"column {column!r} missing:\n{out}"
    project = row(out, "project")
    assert len(project) == len(COLUMNS) and float(project[4]) > 0 and float(project[7]) > 0
    assert project[5].endswith("%") and project[6] == "n/a"    # MFU against the given peak; no CUDA memory on a CPU
    for anchor, module in (("lucidrains", "denoising_diffusion_pytorch"), ("diffusers", "diffusers")):
        if installed(module):
            cells = row(out, anchor)
            assert len(cells) == len(COLUMNS) and float(cells[4]) > 0
            ratio = row(out, anchor, after="ratios")
            assert len(ratio) == len(RATIO_COLUMNS) + 1 and all(float(x) > 0 for x in ratio[2:]), ratio
        else:
            assert f"{anchor}: skipped" in out


@pytest.fixture
def keep_threads():
    "The benchmark sets torch's CPU threads (--tiny: 1); give the test session its own number back."
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_missing_anchors_are_skipped_with_a_clear_line(monkeypatch, capsys, keep_threads):
    # A module set to None in sys.modules cannot be imported: as if the package were not installed.
    for module in ("denoising_diffusion_pytorch", "diffusers"): monkeypatch.setitem(sys.modules, module, None)
    results = train_bench.main([*TINY, "--ddim-steps", "0"])
    out = capsys.readouterr().out
    assert [r["model"] for r in results] == ["project"]
    assert 'lucidrains: skipped, denoising-diffusion-pytorch is not installed (pip install -e ".[bench]")' in out
    assert 'diffusers: skipped, diffusers is not installed (pip install -e ".[bench]")' in out
    assert "ratios: n/a" in out and row(out, "project")[7] == "n/a"   # --ddim-steps 0: no sampling


@pytest.mark.parametrize("argv, message", [
    (["--anchor-settings", "fp16"], "must start with fp32 or bf16"),
    (["--anchor-settings", "bf16+fast"], "unknown part"),
    (["--models", "project,stylegan"], "unknown model(s) stylegan"),
    (["--size", "50"], "must be a multiple of 8"),
])
def test_bad_options_fail_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e: train_bench.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_anchor_settings_parse():
    assert train_bench.Setting.parse("bf16+compile+cl") == train_bench.Setting("bf16", True, True)
    assert train_bench.Setting.parse("fp32").label == "fp32"


def test_quality_check_compares_the_baseline_with_the_fast_settings(capsys, keep_threads):
    train_bench.main(["--tiny", "--device", "cpu", "--models", "project", "--steps", "1", "--ddim-steps", "0",
                      "--quality-steps", "2", "--quality-images", "16", "--quality-samples", "4"])
    out = capsys.readouterr().out
    assert "quality kept by the speed-ups" in out and "SWD x floor" in out
    rows = [row(out, setting, after="quality") for setting in ("fp32", "bf16")]   # the baseline, then --precision bf16
    assert all(r[1] == "2" and float(r[3]) > 0 for r in rows), rows


def test_targets_are_judged_from_the_rows():
    "The GPU verdicts (only printed on CUDA) from hand-made rows: 6x eager and 1.5x compiled lucidrains."
    def r(model, setting, ips, gflop, sample_ips, peak=None, mfu=None):
        return dict(model=model, setting=setting, train_ips=ips, gflop=gflop, sample_ips=sample_ips, peak_gib=peak, train_mfu=mfu)
    project = r("project", "bf16+compile+cl", 6000, 14.6, 500, peak=5.0, mfu=0.33)
    rows = [project, r("lucidrains", "fp32", 1000, 14.6, 84), r("lucidrains", "fp32+compile", 4000, 14.6, 84)]
    lines = "\n".join(train_bench.targets(project, rows, train_bench.parse_args(["--batch", "64"])))
    assert "5x lucidrains eager [fp32] at matched FLOPs: 6.00x -> met" in lines
    assert "2x lucidrains compiled [fp32+compile] at matched FLOPs: 1.50x -> NOT met" in lines
    assert "MFU >= 30%: 33.0% -> met" in lines and "5.00 GiB -> met" in lines and "5.95x img/s -> met" in lines


def test_cpu_recipe_trains_and_scores(tmp_path):
    "The script behind the README's recipe table runs end to end (a few seconds of training, a few samples)."
    r = subprocess.run([sys.executable, "-m", "bench.cpu_recipe", "train", "v-bf16-minsnr5", "--minutes", "0.02",
                        "--out", str(tmp_path), "--n", "8", "--steps", "3", "--seeds", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    import json
    scored = json.loads(r.stdout.strip().splitlines()[-1])
    assert scored["n"] == 8 and scored["swd_multiple"] > 0 and 0 <= scored["copied_fraction"] <= 1
    assert scored["sampler"] == "dpm++" and set(scored["by_level"]) == {"32px", "16px"} and len(scored["by_seed"]) == 2
    config = json.loads((tmp_path / "v-bf16-minsnr5" / "config.json").read_text())
    assert config["train"]["min_snr_gamma"] == 5.0 and config["train"]["precision"] == "bf16"
    assert (tmp_path / "v-bf16-minsnr5" / "ema.safetensors").is_file()
