"""Chapters 5 and 6 as a learner uses them: JupyterLab in a real browser (Chromium via Playwright).

nbval proves that cells run; this proves the interactive parts work for a person: the panel
does not train on its own, shows progress and epoch lines while training, reports a bad
value, stops on every Stop, saves what it trained, and chapter 6 reuses that model and
classifies a typed review. Screenshots land in outputs/browser-test/ (or $COURSE_ARTIFACTS).

Runs in the fast profile (about 4 minutes on 2 cores). Needs Debian's `chromium` (./run test
installs it) and the `playwright` package; without them it is skipped, unless
COURSE_REQUIRE_BROWSER=1 (set by ./run test) makes that a failure.
"""

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

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("COURSE_CHROMIUM", "/usr/bin/chromium")
MINUTE = 60_000  # Playwright timeouts are in milliseconds

pytestmark = pytest.mark.browser


def _require_browser():
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install playwright)")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("COURSE_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 over a copy of the notebooks, stopped by its process id."""
    _require_browser()
    work = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", work / "notebooks")
    port = _free_port()
    env = {**os.environ, "COURSE_PROFILE": "fast", "COURSE_OUTPUT_DIR": str(work / "outputs"),
           "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
    env.pop("COURSE_HEADLESS", None)  # a person is at the screen: nothing may press Train for them
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.token=", "--ServerApp.password=", f"--ServerApp.root_dir={work / 'notebooks'}",
               f"--LabApp.workspaces_dir={work / 'workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = (work / "jupyterlab.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"JupyterLab did not start; see {work / 'jupyterlab.log'}")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def page(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.lab_url = lab
        yield page
        browser.close()


@pytest.fixture(scope="module")
def shots():
    folder = Path(os.environ.get("COURSE_ARTIFACTS") or ROOT / "outputs" / "browser-test")
    folder.mkdir(parents=True, exist_ok=True)

    def shoot(page, name: str) -> None:
        page.screenshot(path=str(folder / f"{name}.png"), full_page=False)
    return shoot


def _open_and_run_all(page, notebook: str) -> None:
    page.goto(f"{page.lab_url}/lab/tree/{notebook}")
    page.wait_for_selector(".jp-Notebook", timeout=2 * MINUTE)
    page.wait_for_selector(".jp-Notebook-toolbar", timeout=MINUTE)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def _control(page, kind: str, description: str):
    return page.locator(f".widget-{kind}").filter(has=page.locator("label", has_text=re.compile(
        rf"^{description}$")))


def _set_text(page, description: str, value: str) -> None:
    box = _control(page, "text", description).locator("input")
    box.fill(value)
    box.press("Enter")


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    end = time.time() + timeout_s
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def test_chapter_5_panel_and_chapter_6_reuse_in_a_real_browser(page, shots):
    _open_and_run_all(page, "05_fine_tuning_loop.ipynb")
    page.wait_for_selector("text=Solution 5.3:", timeout=10 * MINUTE)  # the last cell ran
    shots(page, "05-1-after-run-all")
    # Run All must not train: the panel waits for the person.
    assert page.locator("text=press Train; the next cells use what it trains").count() == 1
    assert page.locator("text=Nothing to save: press Train").count() == 1
    train = page.locator("button", has_text=re.compile(r"^\s*Train$"))
    stop = page.locator("button", has_text=re.compile(r"^\s*Stop$"))
    train.scroll_into_view_if_needed()
    assert "estimated training time" in page.locator(".jupyter-widgets").filter(
        has_text="estimated training time").first.inner_text()

    # A bad value is reported, not trained.
    _set_text(page, "learning rate", "fast please")
    train.click()
    page.wait_for_selector("text=is not a number", timeout=MINUTE)
    shots(page, "05-2-bad-value")
    _set_text(page, "learning rate", "3e-4")

    # Change a slider through its editable readout, then train to the end.
    readout = _control(page, "slider", "epochs").locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("1")
    page.keyboard.press("Enter")
    train.click()
    page.wait_for_selector("text=/batch \\d+\\/\\d+ · loss/", timeout=3 * MINUTE)  # progress shows
    page.wait_for_selector("text=Epoch 1/1", timeout=5 * MINUTE)  # the epoch line, in the Output
    page.wait_for_selector("text=/done. Best epoch 1/", timeout=5 * MINUTE)
    plot = page.locator(".jupyter-widgets img")
    assert plot.count() >= 1 and plot.first.is_visible()  # the live plot
    shots(page, "05-3-trained")

    # Train again with many epochs and Stop: it must stop on this second click too.
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("10")
    page.keyboard.press("Enter")
    train.click()
    page.wait_for_selector("text=/batch \\d+\\/\\d+ · loss/", timeout=3 * MINUTE)
    _wait_for(lambda: stop.is_enabled(), 60, "the Stop button to be enabled")
    stop.click()
    page.wait_for_selector("text=/stopped after \\d+ batches; your last finished run is kept/",
                           timeout=3 * MINUTE)
    progress = page.locator("text=/batch \\d+\\/\\d+ · loss/").first.inner_text()
    done, total = map(int, re.search(r"batch (\d+)/(\d+)", progress).groups())
    assert done < total, (done, total)
    shots(page, "05-4-stopped")

    # Save what the panel trained (the finished one-epoch run, not the stopped one).
    save_cell = page.locator(".jp-CodeCell").filter(has_text="if panel.trained_config is None")
    save_cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    page.wait_for_selector("text=/Saved to .*; chapters 6-8 reuse it/", timeout=2 * MINUTE)

    # Chapter 6 reuses the learner's model (trained with their settings) and classifies a review.
    _open_and_run_all(page, "06_saving_and_loading.ipynb")
    page.wait_for_selector("text=Solution 6.3:", timeout=10 * MINUTE)
    assert page.locator("text=trained with your settings").count() >= 1
    box = page.locator(".widget-textarea textarea")
    box.fill("An absolute triumph, moving and funny.")
    page.locator("button", has_text="Classify").click()
    page.wait_for_selector("td:has-text('An absolute triumph, moving and funny.')", timeout=MINUTE)
    label = page.locator("tr", has_text="An absolute triumph").locator("td").first.inner_text()
    assert label in {"fresh", "rotten"}
    shots(page, "06-classified")
