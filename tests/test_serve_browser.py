"""The playground in a real headless browser (Debian's chromium driven by Playwright): it loads
from the server alone, streams a completion into the page, shows server errors, and stops.

Needs ``run_scripts/install_browser.sh`` (chromium + the playwright package); skipped otherwise.
The screenshot goes to ``$CODEGEEX_TEST_ARTIFACTS`` (default: the test's temporary directory).
"""

import os
import shutil
from pathlib import Path

import pytest

from test_serve_support import start_server

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("chromium not found (install it with run_scripts/install_browser.sh or set CHROMIUM_PATH)")
    return path


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    executable = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                   "(run_scripts/install_browser.sh)")
    # 1024 positions: room for a completion long enough to be stopped halfway
    server = start_server(tmp_path_factory, overrides=("model.max_position_embeddings=1024",
                                                       "inference.max_length=1024"))
    profile = tmp_path_factory.mktemp("chromium-profile")
    try:
        with sync_api.sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(profile), executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
            tab = context.new_page()
            tab.server = server
            tab.goto(server.url + "/")
            yield tab
            context.close()
    finally:
        server.stop()


def fill_form(page, prompt, max_tokens):
    page.select_option("#task", "complete")
    page.select_option("#language", "Python")
    page.fill("#prompt", prompt)
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#temperature", "0")


def test_playground_streams_a_completion_into_the_page(page, tmp_path):
    page.wait_for_function("document.querySelectorAll('#language option').length > 10")
    assert "tiny" in page.text_content("#model")
    fill_form(page, "def fibonacci(n):\n", 24)
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const out = document.getElementById('generated');
            if (out) window.lengths.push(out.textContent.length);
        }).observe(document.getElementById('output'), {childList: true, subtree: true, characterData: true});
    }""")
    page.click("#run")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('done')",
                           timeout=120_000)
    shown = page.text_content("#generated")
    lengths = page.evaluate("window.lengths")
    growth = sorted({n for n in lengths if n > 0})
    assert len(growth) >= 2 and growth[-1] == len(shown)       # the text arrived in pieces

    with page.server.client() as client:
        answer = client.post("/v1/code/complete", json={
            "code": "def fibonacci(n):\n", "language": "Python", "max_tokens": 24,
            "temperature": 0, "top_p": 0.95, "top_k": 0}).json()
    assert shown == answer["choices"][0]["text"]                 # the same greedy completion
    assert page.text_content("#output") == "def fibonacci(n):\n" + shown

    folder = Path(os.environ.get("CODEGEEX_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_playground_shows_server_errors_and_can_stop(page):
    fill_form(page, "x = 1\n" * 100, 1000)     # 405 prompt tokens: only the server can tell
    page.click("#run")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('error')")
    assert ("error: code: 405 prompt tokens + max_tokens=1000 exceed the model's 1024 positions"
            in page.text_content("#status"))

    with page.server.client() as client:
        before = client.get("/health").json()["worker"]["cancelled"]
        fill_form(page, "def f():\n", 1000)
        page.click("#run")
        page.wait_for_function("(document.getElementById('generated') || {}).textContent")
        page.click("#stop")
        page.wait_for_function("document.getElementById('status').textContent === 'stopped'")
        for _ in range(600):       # the aborted fetch closes the stream: the server cancels the job
            if client.get("/health").json()["worker"]["cancelled"] > before:
                break
            page.wait_for_timeout(100)
        else:
            raise AssertionError("the server never saw the stopped request as cancelled")
    assert page.text_content("#generated")
