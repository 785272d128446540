"""tools/colab.py, which `make export` runs and `make test` checks: each notebook's Colab install cell pins the release
the notebook belongs to (tag v{version}, version from face_diffusion/__init__.py); the training chapters tell the
reader to switch Colab to a GPU; image links into assets/ become absolute raw addresses that work from nbs/, on Colab
and in the README. Each case runs the tool on a scratch copy of the project."""
import json, re, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import colab

@pytest.fixture
def project(tmp_path):
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "_runs", "pretrained")
    for name in ["nbs", "face_diffusion", "tools"]: shutil.copytree(ROOT / name, tmp_path / name, ignore=ignore)
    return tmp_path

def run(root, *args):
    r = subprocess.run([sys.executable, str(root / "tools" / "colab.py"), *args], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr

def cells(path): return json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
def text(cell): return "".join(cell["source"])

def install_line(path):
    cell = next(c for c in cells(path) if colab.INSTALL_MARK in text(c))
    return next(l for l in text(cell).splitlines() if "pip" in l and "@v" in l)

def test_install_cell_pins_the_release_tag(project):
    assert run(project)[0] == 0                                    # the cells as the tool writes them now
    version = colab.package_version(ROOT)
    for nb in sorted((project / "nbs").glob("*.ipynb")):
        assert re.search(rf"git\+https://github\.com/\S+@v{re.escape(version)}'", install_line(nb)), nb.name

def test_a_new_version_puts_its_tag_in_every_install_cell(project):
    init = project / "face_diffusion" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', '__version__ = "9.8.7"', init.read_text()))
    rc, out = run(project, "--check")
    assert rc == 1 and "index.ipynb" in out, out                  # the cells still name the old tag
    rc, out = run(project)
    assert rc == 0, out
    for nb in sorted((project / "nbs").glob("*.ipynb")):
        assert "@v9.8.7'" in install_line(nb), nb.name
    assert run(project, "--check")[0] == 0

def test_training_chapters_ask_for_a_gpu_and_only_they(project):
    assert run(project)[0] == 0
    for nb in sorted((project / "nbs").glob("*.ipynb")):
        badge = text(next(c for c in cells(nb) if colab.BADGE_MARK in text(c)))
        asks = "Change runtime type" in badge and "GPU" in badge
        assert asks == (nb.name in colab.TRAINING), nb.name
    assert {"04_training.ipynb", "08_faces.ipynb"} <= colab.TRAINING

@pytest.mark.parametrize("link", ["../assets/x.png", "assets/x.png", "./assets/x.png"])
def test_relative_asset_links_become_absolute(project, link):
    nb_path = project / "nbs" / "index.ipynb"
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    nb["cells"].append({"cell_type": "markdown", "id": "feedf00d", "metadata": {}, "source": [f"![a face]({link})"]})
    nb_path.write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    rc, out = run(project, "--check")
    assert rc == 1 and "index.ipynb" in out, out
    assert run(project)[0] == 0
    last = text(cells(nb_path)[-1])
    assert last == "![a face](https://raw.githubusercontent.com/face-diffusion/face_diffusion/main/assets/x.png)", last

def test_other_links_are_left_alone():
    url = "https://github.com/face-diffusion/face_diffusion"
    for s in ["`assets/forward_process.png`", "[x](https://example.org/assets/x.png)", "writes to ../assets/ by hand"]:
        assert colab.absolute_assets(s, url) == s

def test_the_repository_is_in_step():
    "The committed notebooks already carry the current cells: `make export` was run."
    assert colab.main(check=True) == 0

def test_install_lines_in_markdown_follow_the_version(project):
    init = project / "face_diffusion" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', '__version__ = "9.8.7"', init.read_text()))
    assert run(project)[0] == 0
    index = "".join(text(c) for c in cells(project / "nbs" / "index.ipynb") if c["cell_type"] == "markdown")
    assert 'face_diffusion@v9.8.7"' in index and "face_diffusion@v0." not in index
