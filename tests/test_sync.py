"""The sync checks of `make test` catch a notebook edited without `make export`, an unclean notebook,
a README out of step with nbs/index.ipynb, and a saved error output. Each case runs tools/check_sync.py on a scratch copy."""
import json, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent

@pytest.fixture
def project(tmp_path):
    for name in ["pyproject.toml", "README.md"]: shutil.copy2(ROOT / name, tmp_path / name)
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "_runs")
    for name in ["nbs", "face_diffusion", "tools"]: shutil.copytree(ROOT / name, tmp_path / name, ignore=ignore)
    return tmp_path

def check(root):
    r = subprocess.run([sys.executable, str(root / "tools" / "check_sync.py")], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr

def edit_nb(path, fn):
    nb = json.loads(path.read_text())
    fn(nb)
    path.write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n")

def test_in_step_tree_passes(project):
    rc, out = check(project)
    assert rc == 0, out

def test_notebook_edited_without_export_fails(project):
    nb_path = next(p for p in sorted((project / "nbs").glob("*.ipynb"))
                   if "#| export" in p.read_text())
    def add_function(nb):
        cell = next(c for c in nb["cells"] if "".join(c["source"]).startswith("#| export"))
        cell["source"] = "".join(cell["source"]) + "\n\ndef added_without_export(): return 1\n"
    edit_nb(nb_path, add_function)
    rc, out = check(project)
    assert rc == 1 and "export out of step" in out, out

def test_unclean_notebook_fails(project):
    def add_noise(nb): nb["cells"][-1].setdefault("metadata", {})["scrolled"] = True
    edit_nb(project / "nbs" / "index.ipynb", add_noise)
    rc, out = check(project)
    assert rc == 1 and "not clean" in out, out

def test_readme_out_of_step_fails(project):
    def retitle(nb): nb["cells"][0]["source"] = "# face_diffusion, renamed\n"
    edit_nb(project / "nbs" / "index.ipynb", retitle)
    rc, out = check(project)
    assert rc == 1 and "README.md out of step" in out, out

def test_saved_error_output_fails(project):
    def add_error(nb):
        cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and not "".join(c["source"]).startswith("#|"))
        cell["outputs"] = [{"output_type": "error", "ename": "NameError", "evalue": "name 'x' is not defined", "traceback": []}]
    edit_nb(project / "nbs" / "02_embeddings.ipynb", add_error)
    rc, out = check(project)
    assert rc == 1 and "saved error outputs (02_embeddings.ipynb cell" in out and "NameError" in out, out
