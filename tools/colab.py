"""Give every notebook its "Open in Colab" badge and a first code cell that installs the package in
Colab only. The repository address comes from pyproject.toml, so it is written in one place.
Also keeps each notebook's metadata to its kernel and drops saved widget views (no widget state, no editor leftovers).

    python tools/colab.py          # write the cells
    python tools/colab.py --check  # exit 1 naming each notebook that is out of step
"""
import sys
from pathlib import Path
from nbtools import ROOT, read_nb, write_nb, src, repo_url

BADGE_MARK = "colab-badge.svg"
INSTALL_MARK = "# Colab only:"

def badge_cell(url, name):
    gh = url.removeprefix("https://github.com/")
    return {"cell_type": "markdown", "metadata": {}, "source": [
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{gh}/blob/main/nbs/{name})"]}

def install_cell(url):
    lines = ["#| hide\n",
             f"{INSTALL_MARK} install face_diffusion from its repository. Elsewhere this cell does nothing.\n",
             "import sys\n",
             "if 'google.colab' in sys.modules:\n",
             "    import subprocess\n",
             f"    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', 'git+{url}'], check=True)"]
    return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": lines}

def fixed(nb, name, url):
    "The notebook's cells with the badge and install cell in place (after a leading title cell, if any)."
    cells = [c for c in nb["cells"] if BADGE_MARK not in src(c) and INSTALL_MARK not in src(c)]
    at = 1 if cells and cells[0]["cell_type"] == "markdown" and src(cells[0]).lstrip().startswith("# ") else 0
    return cells[:at] + [badge_cell(url, name), install_cell(url)] + cells[at:]

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
    url, bad = repo_url(), []
    for p in sorted((ROOT / "nbs").glob("*.ipynb")):
        nb = read_nb(p)
        want = without_widget_views(fixed(nb, p.name, url))
        if same(nb["cells"], want) and nb["cells"] == without_widget_views(nb["cells"]) and nb.get("metadata") == KERNEL:
            continue
        if check: bad.append(p.name); continue
        nb["cells"], nb["metadata"] = want, KERNEL
        write_nb(nb, p)
        print(f"colab cells written: {p.relative_to(ROOT)}")
    if bad:
        print(f"notebooks without the current Colab badge/install cell or kernel metadata: {', '.join(bad)} -- run `make export`")
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main(check="--check" in sys.argv))
