"""Fixtures of the browser tests: Debian's Chromium driven by playwright, and a private JupyterLab.

Nothing here waits without a bound, and nothing is skipped: a missing piece (the playwright
package, Chromium, a server that does not come up) fails the test with what was missing and how
to install it.

* ``chromium_path``: the Chromium executable (``$MITOOLKIT_CHROMIUM``, else ``chromium`` on PATH,
  else ``/usr/bin/chromium``); when there is none, ``tools/install_browser.sh`` installs Debian's
  package with apt-get, bounded by ``$MITOOLKIT_BROWSER_INSTALL_TIMEOUT`` seconds (default 600).
* ``browser``: headless Chromium launched by playwright with that executable (playwright's own
  browser downloads are never used).
* ``lab_server``: JupyterLab on 127.0.0.1 with a random token, serving a temporary copy of the
  notebooks, with temporary config, data, runtime, settings, workspace and model-cache folders;
  stopped by its process id (API shutdown, then SIGTERM, then SIGKILL of its process group) in
  every case.
* ``browser_output``: the test's output folder (pytest's ``tmp_path``), copied to
  ``$MITOOLKIT_BROWSER_OUT/<test name>`` when that is set (CI artifacts).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
INSTALL_SCRIPT = ROOT / "tools" / "install_browser.sh"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
SERVER_START_TIMEOUT = 90.0  # seconds until /api/status answers
HOW_CHROMIUM = (f"run `{INSTALL_SCRIPT.relative_to(ROOT)}` as root (or with password-less sudo), or "
                "`sudo apt-get update && sudo apt-get install -y chromium`, or set MITOOLKIT_CHROMIUM to a "
                "Chromium/Chrome executable. Never `playwright install`: the test uses the system's Chromium.")
HOW_PLAYWRIGHT = (f"`{sys.executable} -m pip install 'playwright>=1.40'` (it is in the test extra: "
                  f"pip install -e '.[test]'), or `{INSTALL_SCRIPT.relative_to(ROOT)} --python {sys.executable}`.")


def _find_chromium() -> str | None:
    override = os.environ.get("MITOOLKIT_CHROMIUM")
    if override:
        return override if os.access(override, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@pytest.fixture(scope="session")
def chromium_path() -> str:
    found = _find_chromium()
    if found:
        return found
    if os.environ.get("MITOOLKIT_CHROMIUM"):
        pytest.fail(f"MITOOLKIT_CHROMIUM={os.environ['MITOOLKIT_CHROMIUM']} is not an executable file; "
                    f"unset it to use Debian's chromium, or fix the path.", pytrace=False)
    budget = int(os.environ.get("MITOOLKIT_BROWSER_INSTALL_TIMEOUT", "600"))
    print(f"Chromium is missing: installing it with {INSTALL_SCRIPT} (at most {budget} s)", file=sys.stderr)
    with tempfile.TemporaryFile() as out:
        # Its own process group, so that a second guard past the script's own bound ends apt too.
        proc = subprocess.Popen(["bash", str(INSTALL_SCRIPT), "--timeout", str(budget)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            ok = proc.wait(timeout=budget + 30) == 0
            note = ""
        except subprocess.TimeoutExpired:  # the script bounds itself; this should not happen
            _kill_group(proc)
            ok, note = False, f"\n{INSTALL_SCRIPT.name} ran past {budget + 30} s and was stopped."
        out.seek(0)
        log = out.read().decode(errors="replace")[-3000:] + note
    found = _find_chromium()
    if not ok or not found:
        pytest.fail(f"Chromium is not installed, and installing it failed.\n--- installer output (tail) "
                    f"---\n{log}\n---\nTo install it: {HOW_CHROMIUM}", pytrace=False)
    return found


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator["object"]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        missing = f"The Python package playwright is missing in {sys.executable} ({err})."
    else:
        missing = None
    if missing:
        pytest.fail(f"{missing} To install it: {HOW_PLAYWRIGHT}", pytrace=False)
    with sync_playwright() as pw:
        try:
            chromium = pw.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS,
                                          timeout=60_000)
        except Exception as err:
            pytest.fail(f"Chromium at {chromium_path} did not start under playwright: {err}\n"
                        f"To (re)install it: {HOW_CHROMIUM}", pytrace=False)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def browser_output(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """Where a test saves its screenshots and logs; printed, and copied to $MITOOLKIT_BROWSER_OUT."""
    out = tmp_path / "browser-output"
    out.mkdir()
    yield out
    copy_to = os.environ.get("MITOOLKIT_BROWSER_OUT")
    if copy_to:
        target = Path(copy_to) / request.node.name
        shutil.copytree(out, target, dirs_exist_ok=True)
        out = target
    print(f"\nbrowser test output (screenshots, logs): {out}")


@dataclass
class LabServer:
    base_url: str  # http://127.0.0.1:PORT
    token: str
    root_dir: Path  # the temporary copy of notebooks/ it serves
    process: subprocess.Popen
    log_path: Path

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}{path}{sep}token={self.token}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_settings(settings_dir: Path) -> None:
    """User settings for this server only: every cell in the DOM, no news or update checks."""
    overrides = {
        # The default 'contentVisibility'/'full' modes may keep off-screen cells (and widgets) out
        # of the DOM; the test reads the page, so render everything.
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }
    for plugin, values in overrides.items():
        package, name = plugin.rsplit("/", 1)
        folder = settings_dir / package
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.jupyterlab-settings").write_text(json.dumps(values))


def _get(url: str, timeout: float = 3.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (127.0.0.1 only)
        return response.status


def _stop_server(proc: subprocess.Popen, base_url: str | None, token: str) -> None:
    """Stop the server started by this fixture (by its pid; its kernels go with it)."""
    if proc.poll() is not None:
        return
    if base_url:
        try:  # the clean way: the server shuts its kernels down, then exits
            request = urllib.request.Request(f"{base_url}/api/shutdown", method="POST",
                                             headers={"Authorization": f"token {token}"})
            urllib.request.urlopen(request, timeout=5).close()  # noqa: S310
        except (OSError, urllib.error.URLError):
            pass
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    # Kernels left behind by a killed server are in the server's own process group (its pid).
    _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process this module started with start_new_session=True, and its group (= its pid)."""
    if proc.poll() is None:
        proc.kill()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    base = tmp_path_factory.mktemp("jupyterlab")
    root_dir = base / "notebooks"
    # A copy: running the notebook in the page must not write outputs into the repository's file.
    shutil.copytree(NOTEBOOKS, root_dir, ignore=shutil.ignore_patterns(
        ".ipynb_checkpoints", "mitoolkit-out", "__pycache__"))
    dirs = {name: base / name for name in ("config", "data", "runtime", "settings", "workspaces", "ipython",
                                            "model-cache")}
    for folder in dirs.values():
        folder.mkdir()
    _write_settings(dirs["settings"])
    token = secrets.token_hex(24)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
        "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
        "IPYTHONDIR": str(dirs["ipython"]),
        "MITOOLKIT_QUICK": "1",
        "MITOOLKIT_CACHE": str(dirs["model-cache"]),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("JUPYTER_TOKEN", None)
    log_path = base / "jupyterlab.log"
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
        f"--port={_free_port()}", "--ServerApp.port_retries=20",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        # window.jupyterapp: the test reads the kernel's state and cell errors from the front-end.
        "--LabApp.expose_app_in_browser=True",
        "--LanguageServerManager.autodetect=False",
        # A safety net should the teardown never run (pytest killed): idle kernels are culled and
        # an idle server without kernels exits by itself.
        "--MappingKernelManager.cull_idle_timeout=900", "--MappingKernelManager.cull_interval=60",
        "--ServerApp.shutdown_no_activity_timeout=900",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=root_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    server = LabServer("", token, root_dir, proc, log_path)
    try:
        server.base_url = _wait_for_server(proc, dirs["runtime"], token, server)
        yield server
    finally:
        _stop_server(proc, server.base_url or None, token)


def _wait_for_server(proc: subprocess.Popen, runtime_dir: Path, token: str, server: LabServer) -> str:
    """The server's base URL once /api/status answers (its port is read from its runtime file)."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    info_file = runtime_dir / f"jpserver-{proc.pid}.json"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with code {proc.returncode} before answering.\n--- its log "
                        f"---\n{server.log_tail()}", pytrace=False)
        if info_file.exists():
            try:
                info = json.loads(info_file.read_text())
                base_url = f"http://127.0.0.1:{info['port']}"
                if _get(f"{base_url}/api/status?token={token}") == 200:
                    return base_url
            except (OSError, ValueError, KeyError, urllib.error.URLError):
                pass
        time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer /api/status within {SERVER_START_TIMEOUT:.0f} s.\n--- its log "
                f"---\n{server.log_tail()}", pytrace=False)
