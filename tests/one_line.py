"Shared by the test files: checks that an error is one line naming what to fix, and the command line run in-process."
import contextlib, io, re

import numpy as np

import pytest


def refused(call, *fragments, error=ValueError):
    "The message of the error `call()` raises, checked to be one line holding each of `fragments`."
    with pytest.raises(error) as caught: call()
    message = str(caught.value)
    assert '\n' not in message, message
    for fragment in fragments: assert fragment in message, (fragment, message)
    return message


def run_main(*args):
    "`face-diffusion ARGS` in-process: (exit status, stdout, stderr); argparse's own exits are caught."
    from face_diffusion.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main([str(a) for a in args])
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()


def one_line(code, err, *words):
    "Exit status 2 and one line naming each of `words`."
    said = [l for l in err.strip().splitlines() if not re.search(r'\d+%\|', l)]   # (tqdm's bars share stderr)
    assert code == 2 and len(said) == 1 and said[0].startswith('face-diffusion: error:'), err
    for w in words: assert w in said[0], (w, said[0])


def pixels(path) -> np.ndarray:
    "The RGB pixels of an image file."
    from PIL import Image
    return np.asarray(Image.open(path).convert('RGB'))
