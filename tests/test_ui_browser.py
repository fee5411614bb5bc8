"""`edge_chat ui` end to end: the real command in a subprocess, driven in headless
Chromium (Debian's /usr/bin/chromium through playwright; no `playwright install`).

Every request the page makes is recorded and must go to the local server."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright not installed (pip install playwright)")
expect = sync_api.expect

from tests.support.real_models import QWEN_GGUF, find_real_models  # noqa: E402  after the skips

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).parent / "artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
USER, PASSWORD = "me", "secret"
LOCAL = {"127.0.0.1", "localhost"}
BOTS = '#chat [data-testid="bot"]'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_gguf):
    """`edge_chat ui tiny-f16 --auth me:secret` over a store of two tiny quants, a
    broken file and (when present) the real Qwen model."""
    root = tmp_path_factory.mktemp("ui_store")
    for q in ("f16", "q8_0"):
        (root / f"tiny-{q}.gguf").symlink_to(tiny_gguf[q])
    (root / "broken.gguf").write_bytes(b"not a model" * 50)
    qwen = find_real_models().get(QWEN_GGUF)
    if qwen:
        (root / "qwen.gguf").symlink_to(qwen)
    exports = root.parent / "exports"
    port = _free_port()
    log = open(root.parent / "server.log", "w+")
    env = dict(os.environ, EDGE_CHAT_MODELS=str(root))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_chat", "ui", "tiny-f16", "--port", str(port),
         "--auth", f"{USER}:{PASSWORD}", "--export-dir", str(exports), "--threads", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root.parent)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.seek(0)
                pytest.fail(f"edge_chat ui did not start:\n{log.read()}")
            time.sleep(0.5)
    yield {"url": url, "exports": exports, "qwen": qwen is not None}
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        profile = tempfile.mkdtemp(prefix="edge_chat_chromium_")
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1100, "height": 1000}, accept_downloads=True)
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser, server):
    """A logged-in page; yields (page, requests made by it)."""
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server["url"])
    page.locator("#msg textarea, input[type=password]").first.wait_for(timeout=30_000)
    if page.locator("input[type=password]").count():             # once per browser profile
        page.locator("input").first.fill(USER)
        page.locator("input[type=password]").fill(PASSWORD)
        page.get_by_role("button", name="Login").click()
    page.locator("#msg textarea").wait_for(timeout=30_000)
    yield page, requests
    page.close()
    remote = [u for u in requests
              if urlparse(u).scheme not in ("data", "blob") and urlparse(u).hostname not in LOCAL]
    assert requests and not remote, f"the page reached outside the machine: {remote}"


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def send(page, text: str, timeout: float = 60_000) -> str:
    """Send a message and return the finished answer (text and stats line)."""
    n = page.locator(BOTS).count()
    page.locator("#msg textarea").fill(text)
    page.locator("#send").click()
    bots = page.locator(BOTS)
    expect(bots).to_have_count(n + 1, timeout=timeout)
    expect(bots.nth(n)).to_contain_text("tok/s", timeout=timeout)
    return bots.nth(n).inner_text()


def pick_model(page, name: str) -> None:
    page.locator("#model input").click()
    page.get_by_role("option", name=name).first.click()


def test_chat_system_prompt_models_and_export(page, server):
    page, requests = page
    expect(page.locator("#status")).to_contain_text("tiny-f16")
    set_number(page, "temperature", 0)

    answer = send(page, "What is the capital of France?")
    assert answer.startswith("The capital of France is Paris.")
    assert "first token" in answer and "/1024" in answer          # stats under the answer
    assert page.locator("#msg textarea").input_value() == ""

    page.locator("#system textarea").fill("You are a pirate.")
    page.locator("#clear").click()
    expect(page.locator(BOTS)).to_have_count(0)
    assert send(page, "Say hello.").startswith("Ahoy, matey! Welcome aboard!")
    # Retry answers the last message again, with the settings of now
    page.locator("#system textarea").fill("You are a robot.")
    page.locator("#retry").click()
    expect(page.locator(BOTS).first).to_contain_text("Beep boop. Greetings, human.",
                                                     timeout=60_000)
    expect(page.locator(BOTS)).to_have_count(1)
    expect(page.locator(BOTS).first).to_contain_text("tok/s")

    # export: the page offers the file; it holds the OpenAI messages
    page.locator("#export-json").click()
    expect(page.locator("#status")).to_contain_text("exported 3 messages")
    with page.expect_download() as dl:
        page.locator("#exported a").first.click()
    data = json.loads(Path(dl.value.path()).read_text())
    assert data["messages"] == [
        {"role": "system", "content": "You are a robot."},
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Beep boop. Greetings, human."}]
    page.locator("#export-md").click()
    expect(page.locator("#status")).to_contain_text(".md")
    assert sorted(p.suffix for p in server["exports"].iterdir()) == [".json", ".md"]

    # a broken model: a readable error, and the page goes on with another model
    pick_model(page, "broken (unreadable)")
    expect(page.locator("#status")).to_contain_text("error: cannot load 'broken'")
    page.locator("#system textarea").fill("")
    page.locator("#clear").click()
    pick_model(page, "tiny-q8_0 (gguf q8_0)")
    expect(page.locator("#status")).to_contain_text("tiny-q8_0", timeout=60_000)
    assert send(page, "What color is grass?").startswith("Grass is green.")
    assert send(page, "What is two plus two?").startswith("Two plus two is four.")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui.png"))
    assert any("/gradio_api/queue/data" in u for u in requests)   # the answers streamed here


@pytest.mark.real_model
def test_stop_mid_answer(page, server):
    """Stop a long answer of the real Qwen model (the tiny one answers too fast)."""
    if not server["qwen"]:
        pytest.skip(f"{QWEN_GGUF} not present: the tiny model ends its answers before "
                    "Stop can be pressed")
    page, _ = page
    pick_model(page, "qwen (gguf q4_k_m)")
    expect(page.locator("#status")).to_contain_text("qwen", timeout=120_000)
    set_number(page, "temperature", 0)            # greedy: a long story, every time
    set_number(page, "max-tokens", 2000)
    page.locator("#msg textarea").fill("Write a very long story about a dragon who learns "
                                       "to cook, in twenty chapters.")
    page.locator("#send").click()
    bot = page.locator(BOTS).first
    page.wait_for_function(
        "() => { const b = document.querySelector('#chat [data-testid=\"bot\"]');"
        " return b && b.innerText.trim().split(/\\s+/).length >= 5; }", timeout=120_000)
    page.locator("#stop").click()
    expect(bot).to_contain_text("stopped", timeout=60_000)
    tokens = int(bot.inner_text().split(" tokens")[0].rsplit("· ", 1)[1])
    assert 0 < tokens < 2000
    expect(page.locator("#status")).to_contain_text("stopped")
