"""Write README.md from nbs/index.ipynb (Quarto and nbdev-readme cannot run everywhere, so the
project renders it itself): markdown cells as they are, shown code in python fences, text outputs
in plain fences; cells marked `#| hide` are left out.

    python tools/make_readme.py           # write README.md
    python tools/make_readme.py --check   # exit 1 if README.md is out of step
"""
import sys
from nbtools import ROOT, read_nb, src, directives

HEADER = "<!-- Generated from nbs/index.ipynb by `python tools/make_readme.py`; edit the notebook, not this file. -->\n\n"

def output_text(out):
    if out.get("output_type") == "stream": return "".join(out.get("text", ""))
    data = out.get("data", {})
    if "text/markdown" in data: return None
    return "".join(data.get("text/plain", "")) or None

def render(nb):
    parts = []
    for cell in nb["cells"]:
        s = src(cell).strip("\n")
        if cell["cell_type"] == "markdown":
            parts.append(s)
        elif cell["cell_type"] == "code" and "hide" not in directives(cell):
            code = "\n".join(l for l in s.splitlines() if not l.startswith("#|")).strip("\n")
            if code: parts.append(f"```python\n{code}\n```")
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                if "text/markdown" in data: parts.append("".join(data["text/markdown"]).strip("\n")); continue
                t = output_text(out)
                if t and t.strip(): parts.append(f"```\n{t.rstrip()}\n```")
    return HEADER + "\n\n".join(parts) + "\n"

def main(check=False):
    want = render(read_nb(ROOT / "nbs" / "index.ipynb"))
    path = ROOT / "README.md"
    have = path.read_text(encoding="utf-8") if path.exists() else ""
    if check:
        if have != want:
            print("README.md is out of step with nbs/index.ipynb -- run `make export`")
            return 1
        return 0
    if have != want: path.write_text(want, encoding="utf-8"); print("README.md written")
    return 0

if __name__ == "__main__":
    sys.exit(main(check="--check" in sys.argv))
