"""What the browser tests need: headless Chromium from Debian's packages driven by selenium (no browser download at
run time), and servers (JupyterLab, TensorBoard) started on 127.0.0.1 at a free port and stopped by whoever started
them. Nothing here is a test; tests/test_browser.py uses it."""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

INSTALL_HINT = ("install them: apt-get install -y chromium chromium-driver as root (.ci/run does), "
                "pip install selenium jupyterlab (make setup-dev does)")


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for module in ("selenium", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            return f"the Python package {module} is not installed ({INSTALL_HINT})"
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return f"chromium and chromedriver are not on PATH ({INSTALL_HINT})"
    return None


def chromium(download_dir: Path, width: int = 1400, height: int = 1000):
    """Headless Chromium at a fixed window size (screenshots comparable run to run)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--force-device-scale-factor=1", "--no-first-run",
                f"--user-data-dir={download_dir / 'chromium-profile'}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, every: float = 0.05):
    """Poll check() until it returns something truthy; fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout} s: {what}")
        time.sleep(every)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def server(command: list[str], ready_url: str, log: Path, env: dict | None = None, cwd=None, timeout: float = 90):
    """Run a server until the block ends (then stop it and its children); wait until ready_url answers 200."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   start_new_session=True)      # its own process group: stopped with its kernels
    try:
        wait_for(lambda: process.poll() is not None or answers(ready_url), timeout, f"{command[2]} to answer")
        if process.poll() is not None:
            raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


@contextlib.contextmanager
def jupyterlab(root: Path, env: dict):
    """JupyterLab serving root on 127.0.0.1 at a free port with a random token; its settings, runtime files and
    workspaces live under root/.jupyter-home, never in the user's home. Yields (base URL, token)."""
    port, token = free_port(), secrets.token_hex(16)
    home = root / ".jupyter-home"
    for folder in ("config", "runtime", "ipython"):
        (home / folder).mkdir(parents=True, exist_ok=True)
    notification = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True, exist_ok=True)
    notification.write_text('{"fetchNews": "false", "checkForUpdates": false}')   # no "news?" toast over the page
    # every cell drawn, on screen or not: JupyterLab otherwise skips drawing cells scrolled away, whose text then
    # reads as empty
    (home / "settings" / "@jupyterlab" / "notebook-extension").mkdir(parents=True, exist_ok=True)
    (home / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        '{"windowingMode": "none"}')
    env = {**env, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "IPYTHONDIR": str(home / "ipython"), "JUPYTER_PLATFORM_DIRS": "1"}
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--port-retries=0", f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
               f"--LabApp.workspaces_dir={home / 'workspaces'}", f"--LabApp.user_settings_dir={home / 'settings'}",
               "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
    if os.geteuid() == 0:                   # CI containers run as root; Jupyter refuses root unless told
        command.append("--allow-root")
    base = f"http://127.0.0.1:{port}"
    with server(command, f"{base}/api/status?token={token}", root / "jupyterlab.log", env=env, cwd=root):
        yield base, token


@contextlib.contextmanager
def tensorboard(logdir: Path, log: Path):
    """`make tensorboard`'s command on 127.0.0.1 at a free port. Yields the base URL."""
    port = free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
               "--port", str(port)]
    with server(command, f"http://127.0.0.1:{port}/data/runs", log):
        yield f"http://127.0.0.1:{port}"


def text_of(driver, css: str) -> str:
    """The visible text of every element matching css ("" while there is none: the page may still be loading)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    try:
        return "\n".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, css))
    except StaleElementReferenceException:      # redrawn between finding and reading: read again next poll
        return ""
