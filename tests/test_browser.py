"""The timestep slider of chapter 01, tested in a real browser: JupyterLab on 127.0.0.1, driven by Debian's
Chromium through playwright. The test opens a copy of nbs/01_forward.ipynb, runs every cell (IN_TEST=1, so
it is quick), moves the slider with the keyboard, and checks that the picture and the readout changed.
Screenshots before and after are saved in pytest's temporary folder (printed at the end)."""
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


def start_lab(tmp: Path):
    "JupyterLab serving a folder with a copy of the notebook, with private settings and runtime folders."
    root, cfg = tmp / 'root', tmp / 'jupyter'
    root.mkdir(); shutil.copy2(NOTEBOOK, root / NOTEBOOK.name)       # the user's notebook is never touched
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
    return readout !== old && readout.startsWith('t = ' + value + ' ');
}"""


def shown_state(page):
    "The readout text, the picture's src and a hash of the picture's bytes, read from the browser."
    readout = page.inner_text('.fd-readout')
    src = page.get_attribute('img.fd-frame-image', 'src')
    data = page.evaluate("""async (src) => {
        const buf = await (await fetch(src)).arrayBuffer();
        return Array.from(new Uint8Array(buf)); }""", src)
    return readout, src, hashlib.sha256(bytes(data)).hexdigest()


def test_timestep_slider_in_jupyterlab(tmp_path):
    need_chromium()
    from playwright.sync_api import sync_playwright
    started = time.monotonic()
    phases = {}
    mark = lambda name: phases.setdefault(name, round(time.monotonic() - started, 1))
    proc, url, token, log = start_lab(tmp_path)
    try:
        wait_until(lambda: server_up(url, token) or proc.poll() is not None, 40, 'JupyterLab to start')
        mark('server up')
        assert proc.poll() is None, f'JupyterLab exited: {(tmp_path / "jupyterlab.log").read_text()[-2000:]}'
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={'width': 1280, 'height': 900})
                page.goto(f'{url}/lab/tree/{NOTEBOOK.name}?token={token}')
                page.wait_for_selector('.jp-NotebookPanel .jp-Cell', timeout=60_000)
                dialog = page.locator('.jp-Dialog .jp-mod-accept')         # a kernel chooser, if one is asked
                if dialog.count(): dialog.first.click()
                page.wait_for_function("""() => { const app = window.jupyterapp;
                    const w = app && app.shell.currentWidget;
                    return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel; }""",
                    timeout=60_000)                                   # the notebook has a kernel
                mark('notebook open, kernel started')
                page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
                wait_until(lambda: page.evaluate(RUN_STATE) != "running", 150, 'the notebook to run')
                state = page.evaluate(RUN_STATE)
                mark('all cells run')
                assert state == 'done', f'the notebook failed in the browser: {state[-1500:]}'
                slider = page.wait_for_selector(f'{SLIDER} .noUi-handle', timeout=20_000)
                page.locator(SLIDER).scroll_into_view_if_needed()
                before = shown_state(page)
                page.screenshot(path=str(tmp_path / 'slider_before.png'))
                slider.click()                                        # focus the handle, then move it
                for key in ['PageUp', 'PageUp', 'ArrowRight', 'ArrowRight']: page.keyboard.press(key)
                page.wait_for_function(SETTLED, arg=before[0], timeout=10_000)   # moved, and the readout caught up
                after = shown_state(page)
                page.screenshot(path=str(tmp_path / 'slider_after.png'))
                mark('slider moved')
            finally:
                browser.close()
    finally:
        stop(proc, tmp_path / 'jupyter' / 'runtime'); log.close()
    assert after[0] != before[0], 'the readout did not change'
    assert after[1] != before[1] and after[2] != before[2], 'the picture did not change'
    t_before, t_after = (int(re.search(r't = (\d+)', s[0]).group(1)) for s in (before, after))
    assert t_before == 0 and t_after > 0, (before[0], after[0])
    print(f'\nbrowser test: {time.monotonic() - started:.1f} s {phases}; screenshots in {tmp_path}; '
          f'readout {before[0]!r} -> {after[0]!r}')
