"""The course's sliders, tested in a real browser: JupyterLab on 127.0.0.1, driven by Debian's Chromium through
playwright. Each test opens a notebook (a copy of chapter 01 or 02, or a small one built here around chapter 05's reverse
slider), runs every cell (IN_TEST=1, so it is quick), moves the slider with the keyboard, and checks what a person
sees: a picture of a real size, visible, whose bytes are exactly the frame the kernel computes for the value the
slider shows, and a readout that names that value. Screenshots are saved in pytest's temporary folder."""
import hashlib, json, os, re, secrets, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / 'nbs' / '01_forward.ipynb'
CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--no-first-run']
SLIDER = '.fd-timestep-slider'


def need_chromium():
    if Path(CHROMIUM).exists(): return
    msg = f"the browser test needs Debian's Chromium at {CHROMIUM}: run `apt-get install chromium`"
    if os.environ.get('CI'): pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def wait_until(check, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check(): return
        time.sleep(0.25)
    raise AssertionError(f'timed out after {timeout} s waiting for {what}')


def start_lab(tmp: Path, notebook: Path):
    "JupyterLab serving a folder with a copy of the notebook, with private settings and runtime folders."
    root, cfg = tmp / 'root', tmp / 'jupyter'
    root.mkdir(); shutil.copy2(notebook, root / notebook.name)       # the user's notebook is never touched
    settings = cfg / 'lab-settings' / '@jupyterlab' / 'apputils-extension'
    settings.mkdir(parents=True)                                       # no news, no update checks: offline and quiet
    (settings / 'notification.jupyterlab-settings').write_text(json.dumps({'fetchNews': 'false', 'checkForUpdates': False}))
    nb_settings = cfg / 'lab-settings' / '@jupyterlab' / 'notebook-extension'
    nb_settings.mkdir(parents=True)                                    # every cell in the DOM, even off screen
    (nb_settings / 'tracker.jupyterlab-settings').write_text(json.dumps({'windowingMode': 'none'}))
    port, token = free_port(), secrets.token_hex(16)
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, IN_TEST='1', PATH=bin_dir + os.pathsep + os.environ.get('PATH', ''),
               JUPYTER_CONFIG_DIR=str(cfg / 'config'), JUPYTER_RUNTIME_DIR=str(cfg / 'runtime'),
               JUPYTER_DATA_DIR=str(cfg / 'data'), JUPYTER_PLATFORM_DIRS='1', PYTHONUNBUFFERED='1')
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--allow-root', '--ip=127.0.0.1', f'--port={port}',
           f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={root}',
           f'--LabApp.user_settings_dir={cfg / "lab-settings"}', f'--LabApp.workspaces_dir={cfg / "workspaces"}',
           '--LabApp.expose_app_in_browser=True', '--ServerApp.port_retries=0']
    log = open(tmp / 'jupyterlab.log', 'w')
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f'http://127.0.0.1:{port}', token, log


def stop(proc, runtime_dir: Path):
    "Stop the server (its whole process group), then any kernel it started that is still running."
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM); proc.wait(timeout=10)   # the server shuts its kernels down
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try: os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError: pass
            proc.wait(timeout=5)
    for cmdline in Path('/proc').glob('[0-9]*/cmdline'):                  # kernels run in their own sessions
        try:
            if str(runtime_dir) in cmdline.read_bytes().decode(errors='replace'):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError): pass


def server_up(url, token):
    try:
        with urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=2) as r: return r.status == 200
    except OSError: return False


RUN_STATE = """() => {
    const w = window.jupyterapp.shell.currentWidget, cells = w.content.model.cells;
    const err = document.querySelector('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]');
    if (err && err.innerText.includes('Error')) return 'error: ' + err.innerText;
    for (let i = 0; i < cells.length; i++) {
        const c = cells.get(i);
        if (c.type === 'code' && c.executionCount == null) return 'running';
    }
    return w.sessionContext.session.kernel.status === 'idle' ? 'done' : 'running';
}"""


SETTLED = """(old) => {
    const readout = document.querySelector('.fd-readout').innerText;
    const value = document.querySelector('.fd-timestep-slider .widget-readout').innerText.trim();
    return readout !== old && new RegExp('(^|[^0-9])' + value + '($|[^0-9])').test(readout);
}"""


def shown_state(page):
    "The readout text, the picture's src and a hash of the picture's bytes, read from the browser."
    readout = page.inner_text('.fd-readout')
    src = page.get_attribute('img.fd-frame-image', 'src')
    data = page.evaluate("""async (src) => {
        const buf = await (await fetch(src)).arrayBuffer();
        return Array.from(new Uint8Array(buf)); }""", src)
    return readout, src, hashlib.sha256(bytes(data)).hexdigest()


SHOWN = """(slider) => {
    // The frame_slider box around this slider: its picture, the slider's own value and the box's readout.
    let box = document.querySelector(slider);
    while (box && !(box.querySelector('img.fd-frame-image') && box.querySelector('.fd-readout'))) box = box.parentElement;
    const img = box.querySelector('img.fd-frame-image'), r = img.getBoundingClientRect(), st = getComputedStyle(img);
    return {value: box.querySelector('.widget-readout').innerText.trim(), readout: box.querySelector('.fd-readout').innerText,
            src: img.src, natural: [img.naturalWidth, img.naturalHeight], box: [r.width, r.height],
            visible: st.visibility !== 'hidden' && st.display !== 'none' && parseFloat(st.opacity) > 0.5};
}"""

KERNEL = """async (code) => {
    const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
    let out = '';
    const future = kernel.requestExecute({code, silent: false, store_history: false});
    future.onIOPub = (msg) => { if (msg.header.msg_type === 'stream') out += msg.content.text; };
    await future.done;
    return out.trim();
}"""


def picture_hash(page, src):
    "SHA-256 of the bytes the browser shows (fetched from the image's own src)."
    data = page.evaluate("""async (src) => Array.from(new Uint8Array(await (await fetch(src)).arrayBuffer()))""", src)
    return hashlib.sha256(bytes(data)).hexdigest()


def seen(page, box_name, slider):
    "What the browser shows, and the hash of the frame the kernel says belongs to the value the slider shows."
    shown = page.evaluate(SHOWN, slider)
    value = shown['value']
    want = page.evaluate(KERNEL, f"import hashlib; b = {box_name}; print(hashlib.sha256(b.frame_png({value}, 0, "
                                 f"b.dropdown.value if b.dropdown is not None else None)).hexdigest())")
    return shown, picture_hash(page, shown['src']), want


def check_frame(shown, got, want):
    "A picture of a real size, visible, exactly the kernel's frame for the shown value; a readout naming that value."
    assert shown['natural'][0] >= 32 and shown['natural'][1] >= 32, f"picture too small: {shown['natural']} px"
    assert shown['box'][0] >= 32 and shown['box'][1] >= 32 and shown['visible'], f"picture not visible: {shown}"
    assert re.fullmatch(r'[0-9a-f]{64}', want), f'the kernel did not answer: {want!r}'
    assert got == want, f"the picture is not the frame for value {shown['value']}"
    assert re.search(rf"(?<![0-9]){re.escape(shown['value'])}(?![0-9])", shown['readout']), shown


def drive(tmp_path, notebook, box_name, keys, slider=SLIDER):
    "Open `notebook` in JupyterLab, run it, check the frame, press `keys` on the slider, check again."
    need_chromium()
    from playwright.sync_api import sync_playwright
    started, phases = time.monotonic(), {}
    mark = lambda name: phases.setdefault(name, round(time.monotonic() - started, 1))
    proc, url, token, log = start_lab(tmp_path, notebook)
    try:
        wait_until(lambda: server_up(url, token) or proc.poll() is not None, 40, 'JupyterLab to start')
        mark('server up')
        assert proc.poll() is None, f'JupyterLab exited: {(tmp_path / "jupyterlab.log").read_text()[-2000:]}'
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={'width': 1280, 'height': 900})
                page.goto(f'{url}/lab/tree/{notebook.name}?token={token}')
                page.wait_for_selector('.jp-NotebookPanel .jp-Cell', timeout=60_000)
                dialog = page.locator('.jp-Dialog .jp-mod-accept')         # a kernel chooser, if one is asked
                if dialog.count(): dialog.first.click()
                page.wait_for_function("""() => { const app = window.jupyterapp;
                    const w = app && app.shell.currentWidget;
                    return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel; }""",
                    timeout=60_000)                                   # the notebook has a kernel
                mark('notebook open, kernel started')
                page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
                wait_until(lambda: page.evaluate(RUN_STATE) != "running", 240, 'the notebook to run')
                state = page.evaluate(RUN_STATE)
                mark('all cells run')
                assert state == 'done', f'the notebook failed in the browser: {state[-1500:]}'
                handle = page.wait_for_selector(f'{slider} .noUi-handle', timeout=20_000)
                page.locator(slider).scroll_into_view_if_needed()
                before = seen(page, box_name, slider)
                page.screenshot(path=str(tmp_path / 'slider_before.png'))
                handle.click()                                        # focus the handle, then move it
                for key in keys: page.keyboard.press(key)
                page.wait_for_function(SETTLED, arg=before[0]['readout'], timeout=10_000)   # moved, and the readout caught up
                after = seen(page, box_name, slider)
                page.screenshot(path=str(tmp_path / 'slider_after.png'))
                mark('slider moved')
            finally:
                browser.close()
    finally:
        stop(proc, tmp_path / 'jupyter' / 'runtime'); log.close()
    for shown, got, want in (before, after): check_frame(shown, got, want)
    assert after[0]['value'] != before[0]['value'] and after[1] != before[1], 'the slider did not move the picture'
    print(f'\nbrowser test: {time.monotonic() - started:.1f} s {phases}; screenshots in {tmp_path}; '
          f"{before[0]['readout']!r} -> {after[0]['readout']!r}")
    return before, after


def test_timestep_slider_of_chapter_01(tmp_path):
    before, after = drive(tmp_path, NOTEBOOK, 'slider_box', ['PageUp', 'PageUp', 'ArrowRight', 'ArrowRight'])
    assert before[0]['readout'].startswith('t = 0 ') and int(after[0]['value']) > 0


REVERSE_NOTEBOOK = [   # chapter 05's reverse slider on a trajectory of the exact Gaussian denoiser: seconds, no training
    "import torch\n"
    "from face_diffusion.forward import NoiseSchedule\n"
    "from face_diffusion.sampling import DDPMSampler, GaussianOracle, TrajectoryRecorder, reverse_slider, sample",
    "schedule = NoiseSchedule('cosine', 40)\n"
    "record = TrajectoryRecorder()\n"
    "x = sample(GaussianOracle(schedule, 'eps', mean=0.2, std=0.4), DDPMSampler(schedule, 'eps'), 4, 16,\n"
    "           generator=torch.Generator().manual_seed(0), callback=record)\n"
    "box = reverse_slider(record.trajectory(x), nrow=2)\n"
    "box",
]


def test_reverse_slider_of_chapter_05(tmp_path):
    nb = {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': f'c{i}', 'metadata': {}, 'outputs': [], 'source': s}
                    for i, s in enumerate(REVERSE_NOTEBOOK)],
          'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
          'nbformat': 4, 'nbformat_minor': 5}
    path = tmp_path / 'reverse.ipynb'
    path.write_text(json.dumps(nb))
    (tmp_path / 'lab').mkdir()
    drive(tmp_path / 'lab', path, 'box', ['ArrowRight', 'ArrowRight', 'ArrowRight'])


def test_embedding_slider_of_chapter_02(tmp_path):
    before, after = drive(tmp_path, ROOT / 'nbs' / '02_embeddings.ipynb', 'embedding_box', ['ArrowRight', 'ArrowRight', 'ArrowRight'])
    assert int(after[0]['value']) > int(before[0]['value'])
