"""Small helpers shared by the project's own commands (README, Colab cells, sync checks)."""
import json
try: import tomllib
except ImportError: import tomli as tomllib  # Python 3.10
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def read_nb(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))

def write_nb(nb, path):
    # The same layout nbdev-clean writes, so a rewrite by this tool is already clean.
    txt = json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    Path(path).write_text(txt, encoding="utf-8")

def src(cell):
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s

def directives(cell):
    "The `#| name` lines at the top of a code cell, as a set of names."
    out = set()
    for line in src(cell).splitlines():
        if not line.startswith("#|"): break
        out.update(w.strip().rstrip(":") for w in line[2:].split()[:1])
    return out

def repo_url(root=ROOT):
    "The project's repository address, kept once in pyproject.toml's [project.urls]."
    cfg = tomllib.loads((Path(root) / "pyproject.toml").read_text(encoding="utf-8"))
    return cfg["project"]["urls"]["Repository"].rstrip("/")
