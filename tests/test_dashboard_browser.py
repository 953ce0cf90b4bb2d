"""`autoprune dashboard` opened in a real browser: headless Chromium renders the page of a finished digits run,
which shows the study and its number of trials; the server listens on 127.0.0.1 only."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from autoprune.trials.study import open_storage

pytestmark = pytest.mark.slow
CI_VARIABLE = "AUTOPRUNE_CI"  # set by .ci/run: there a missing browser is a failure, not a skip
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        if os.environ.get(CI_VARIABLE):
            pytest.fail("CI needs headless Chromium (apt-get install chromium)")
        pytest.skip("no Chromium here (apt-get install chromium)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a socket LISTENs on at ``port`` (from /proc/net/tcp), e.g. {'127.0.0.1'}."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def _render(browser: str, url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The text of the page at ``url`` once its scripts have run (and a screenshot of it)."""
    argv = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--window-size=1280,900"]
    if screenshot is not None:
        subprocess.run([*argv, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
    dom = subprocess.run([*argv, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    dom = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", dom, flags=re.DOTALL)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.fixture
def run(tmp_path, cli):
    code, _, err = cli("search", "--budget", "0.5flops", "--method", "optuna", "--evals", "6", "--out", "run", "--quiet")
    assert code == 0, err
    return tmp_path / "run"


def test_dashboard_in_headless_chromium_shows_the_study_and_its_trials(run, tmp_path):
    browser = _browser()
    study = optuna.load_study(study_name=None, storage=open_storage(None, run))
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "autoprune", "dashboard", str(run), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/studies", timeout=5)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "the dashboard did not start"
                time.sleep(0.5)
        assert _listening_addresses(port) == {"127.0.0.1"}  # this machine only, unless --host says otherwise
        home = _render(browser, f"{base}/dashboard", tmp_path / "profile")
        assert study.study_name in home
        shot = tmp_path / "dashboard.png"
        trials = _render(browser, f"{base}/dashboard/studies/{study._study_id}/trials", tmp_path / "profile", shot)
        assert study.study_name in trials and f"{len(study.trials)} Trials" in trials
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        server.terminate()
        server.wait(timeout=30)
