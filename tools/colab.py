"""Give every notebook its "Open in Colab" badge and a first code cell that installs the package in
Colab only, pinned to the release the notebook belongs to: the git tag `v{version}` of the repository, with the
version read from face_diffusion/__init__.py. The repository address comes from pyproject.toml, so it is written in
one place. The training chapters' badge cell also tells the reader to switch Colab to a GPU.
Images in markdown that point into the repository's `assets/` folder (`assets/x.png` or `../assets/x.png`) are
rewritten to absolute raw.githubusercontent.com addresses: a relative path is resolved from `nbs/` in Jupyter and
from nowhere on Colab, while the absolute address works in the README on GitHub, in Jupyter and on Colab alike.
Install lines in markdown (`pip install "git+{repository}@vX.Y.Z"`) are kept naming the current release.
Also keeps each notebook's metadata to its kernel and drops saved widget views (no widget state, no editor leftovers).

    python tools/colab.py          # write the cells
    python tools/colab.py --check  # exit 1 naming each notebook that is out of step
"""
import re, sys
from pathlib import Path
from nbtools import ROOT, read_nb, write_nb, src, repo_url

BADGE_MARK = "colab-badge.svg"
INSTALL_MARK = "# Colab only:"
# The chapters that train a network: on Colab they need a GPU runtime, and their badge cell says so.
TRAINING = {"04_training.ipynb", "08_faces.ipynb", "10_guidance.ipynb", "10a_text.ipynb", "11_cold.ipynb", "12_cascade.ipynb", "13_experts.ipynb"}
GPU_NOTE = ("**On Colab, switch to a GPU before running this chapter:** *Runtime → Change runtime type →* a GPU "
            "(the free T4 will do) *→ Save*. It trains networks; on Colab's CPU that is many times slower.")

def package_version(root=ROOT):
    "The package version, kept once in face_diffusion/__init__.py; each release is tagged `v{version}` in git."
    text = (Path(root) / "face_diffusion" / "__init__.py").read_text(encoding="utf-8")
    m = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.M)
    if not m: raise SystemExit("face_diffusion/__init__.py has no `__version__ = \"...\"` line")
    return m.group(1)

def raw_url(url, ref="main"):
    "The address where GitHub serves the repository's files as they are, at branch or tag `ref`."
    return url.replace("https://github.com/", "https://raw.githubusercontent.com/", 1) + f"/{ref}"

def badge_cell(url, name):
    gh = url.removeprefix("https://github.com/")
    badge = (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             f"(https://colab.research.google.com/github/{gh}/blob/main/nbs/{name})")
    return {"cell_type": "markdown", "metadata": {}, "source": [badge + ("\n\n" + GPU_NOTE if name in TRAINING else "")]}

def install_cell(url, version):
    tag = f"v{version}"
    lines = ["#| hide\n",
             f"{INSTALL_MARK} install face_diffusion {tag}, the release this notebook belongs to. Elsewhere this cell does nothing.\n",
             "import sys\n",
             "if 'google.colab' in sys.modules:\n",
             "    import subprocess\n",
             f"    release = [sys.executable, '-m', 'pip', 'install', '-q', 'git+{url}@{tag}']\n",
             "    if subprocess.run(release).returncode:                      # that release is not on GitHub yet\n",
             f"        print('release {tag} not found: installing main, which may be newer than this notebook')\n",
             f"        subprocess.run(release[:-1] + ['git+{url}'], check=True)"]
    return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": lines}

# ](assets/x.png), ](../assets/x.png), src="assets/x.png": an image path relative to the repository root or to nbs/.
ASSET_LINK = re.compile(r"""(\]\(|src=["'])(?:\.\./|\./)?assets/""")

def absolute_assets(text, url):
    "Markdown with every relative link into assets/ replaced by its absolute raw address."
    return ASSET_LINK.sub(lambda m: f"{m.group(1)}{raw_url(url)}/assets/", text)

def current_release(text, url, version):
    "Markdown with every `pip install git+{url}@vX.Y.Z` naming the current release's tag instead."
    return re.sub(re.escape(url) + r"@v[0-9][0-9A-Za-z.+-]*", f"{url}@v{version}", text)

def with_absolute_assets(cells, url, version):
    "Markdown cells with absolute asset links and install lines that name the current release."
    out = []
    for c in cells:
        if c["cell_type"] == "markdown":
            s = current_release(absolute_assets(src(c), url), url, version)
            if s != src(c): c = {**c, "source": s.splitlines(keepends=True)}
        out.append(c)
    return out

def fixed(nb, name, url, version):
    "The notebook's cells with the badge and install cell in place (after a leading title cell, if any)."
    cells = [c for c in nb["cells"] if BADGE_MARK not in src(c) and INSTALL_MARK not in src(c)]
    at = 1 if cells and cells[0]["cell_type"] == "markdown" and src(cells[0]).lstrip().startswith("# ") else 0
    badge, install = badge_cell(url, name), install_cell(url, version)
    for new, mark in ((badge, BADGE_MARK), (install, INSTALL_MARK)):         # keep the cell ids the notebook had
        old = next((c for c in nb["cells"] if mark in src(c) and "id" in c), None)
        if old: new["id"] = old["id"]
    cells = cells[:at] + [badge, install] + cells[at:]
    return with_absolute_assets(cells, url, version)

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

def without_widget_views(cells):
    "Saved outputs that point at live widget models show nothing without a kernel: leave them out."
    return [{**c, "outputs": [o for o in c["outputs"] if WIDGET_VIEW not in o.get("data", {})]} if "outputs" in c else c
            for c in cells]

KERNEL = {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}}

def same(a, b):
    strip = lambda cs: [(c["cell_type"], src(c)) for c in cs]
    return strip(a) == strip(b)

def main(check=False):
    url, version, bad = repo_url(), package_version(), []
    for p in sorted((ROOT / "nbs").glob("*.ipynb")):
        nb = read_nb(p)
        want = without_widget_views(fixed(nb, p.name, url, version))
        if same(nb["cells"], want) and nb["cells"] == without_widget_views(nb["cells"]) and nb.get("metadata") == KERNEL:
            continue
        if check: bad.append(p.name); continue
        nb["cells"], nb["metadata"] = want, KERNEL
        write_nb(nb, p)
        print(f"colab cells written: {p.relative_to(ROOT)}")
    if bad:
        print(f"notebooks without the current Colab badge/install cell, absolute asset links or kernel metadata: "
              f"{', '.join(bad)} -- run `make export`")
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main(check="--check" in sys.argv))
