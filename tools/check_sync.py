"""The first checks of `make test`, in order, each on a scratch copy so nothing here is changed:
1. the export is in sync: a fresh `nbdev-export` changes no file under face_diffusion/ (new files included);
2. the notebooks are clean: `nbdev-clean` changes nothing;
3. every notebook has its Colab badge and install cell (tools/colab.py);
4. README.md is in sync with nbs/index.ipynb (tools/make_readme.py);
5. no notebook has a saved error output (a reader would see a traceback where the chapter's result belongs).
Each failure is one line naming the files and the command that fixes them (`make export`)."""
import filecmp, os, shutil, subprocess, sys, tempfile
from pathlib import Path
from nbtools import ROOT, read_nb

BIN = Path(sys.executable).parent

SKIP = {"__pycache__", ".ipynb_checkpoints", "_runs"}

def project_files(sub):
    "Files under `sub` that belong to the project: tracked or not ignored by git (all but caches without git)."
    r = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", sub],
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode == 0:
        return {f for f in r.stdout.splitlines() if (ROOT / f).is_file()}
    return tree(ROOT, sub)

def tree(root, sub):
    base = Path(root) / sub
    return {p.relative_to(root).as_posix() for p in base.rglob("*") if p.is_file() and not SKIP & set(p.parts)}

def diff(a, b, sub):
    "Project files under `sub` that differ between this tree (a) and the scratch copy (b), or exist in one only."
    ta, tb = project_files(sub), tree(b, sub)
    return sorted((ta ^ tb) | {f for f in ta & tb if not filecmp.cmp(Path(a)/f, Path(b)/f, shallow=False)})

def run(cmd, cwd):
    r = subprocess.run([str(BIN / cmd)], cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        print(f"{cmd} failed:\n{r.stdout}{r.stderr}"); sys.exit(1)

def scratch():
    d = Path(tempfile.mkdtemp(prefix="fd_sync_"))
    for name in ["pyproject.toml", "README.md"]:
        if (ROOT / name).exists(): shutil.copy2(ROOT / name, d / name)
    for f in project_files("nbs") | project_files("face_diffusion"):
        (d / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, d / f)
    return d

def saved_errors(root=ROOT):
    "'notebook cell N: ErrorName' for every saved error output in nbs/."
    out = []
    for nb in sorted((Path(root) / "nbs").glob("*.ipynb")):
        for i, cell in enumerate(read_nb(nb)["cells"]):
            out += [f"{nb.name} cell {i}: {o.get('ename')}" for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    return out

def main():
    failures = []
    d = scratch()
    try:
        run("nbdev-export", d)
        if (bad := diff(ROOT, d, "face_diffusion")):
            failures.append(f"export out of step with the notebooks ({', '.join(bad)}) -- run `make export`")
        run("nbdev-clean", d)
        if (bad := diff(ROOT, d, "nbs")):
            failures.append(f"notebooks not clean ({', '.join(bad)}) -- run `make export`")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    sys.path.insert(0, str(Path(__file__).parent))
    import colab, make_readme
    if colab.main(check=True): failures.append("Colab cells out of step")
    if make_readme.main(check=True): failures.append("README.md out of step")
    if (errors := saved_errors()):
        failures.append(f"saved error outputs ({'; '.join(errors[:5])}) -- run those chapters for real and save")
    for f in failures: print(f"sync check failed: {f}")
    if failures: return 1
    print("sync check: export, clean notebooks, Colab cells and README are in step")
    return 0

if __name__ == "__main__":
    sys.exit(main())
