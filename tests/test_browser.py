"""Drives the web page in Debian's headless Chromium: pick a reference, type a change, see results, click a
result to make it the new reference."""

import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium); the browser test needs it",
                allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api")
uvicorn = pytest.importorskip("uvicorn")

from index_helpers import SPEC  # noqa: E402
from zscir.index.runner import build_index  # noqa: E402
from zscir.index.search import Searcher  # noqa: E402
from zscir.serve.app import create_app  # noqa: E402
from zscir_fakes import make_image, write_gallery  # noqa: E402

pytestmark = pytest.mark.slow  # every test here takes seconds (see README: make test-fast)

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    write_gallery(root / "g", 16)
    build_index(root / "g", root / "idx", SPEC, progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(Searcher.open(root / "idx", backbone=SPEC)), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    ref = root / "ref.png"
    make_image(7, size=48).save(ref)
    yield f"http://127.0.0.1:{port}", ref, root
    srv.should_exit = True
    t.join(timeout=10)


def test_page_shows_results_and_click_makes_a_new_reference(server):
    url, ref, root = server
    with playwright_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(root / "profile"), executable_path=CHROMIUM, args=FLAGS,
                                                   headless=True)
        try:
            page = ctx.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#info:has-text('16 images')")
            page.fill("#text", "a red square")
            page.set_input_files("#file", str(ref))
            page.wait_for_selector(".result", timeout=15000)
            cards = page.locator(".result")
            assert cards.count() == 12
            first_score = float(cards.first.locator(".score").inner_text())
            assert -1.0 <= first_score <= 1.0
            # images load through /images/{id}
            page.wait_for_function("document.querySelector('.result img').naturalWidth > 0", timeout=10000)
            clicked = cards.nth(2).get_attribute("data-id")
            cards.nth(2).click()
            page.wait_for_function(
                "(id) => document.querySelector('#reference') && document.querySelector('#reference').src.includes('/images/') "
                "&& document.querySelectorAll('.result').length > 0 "
                "&& ![...document.querySelectorAll('.result')].some(c => c.dataset.id === id)",
                arg=clicked, timeout=15000)
            page.locator("#alpha").fill("0.3")
            page.locator("#alpha").dispatch_event("change")
            page.wait_for_selector("#status:has-text('results in')")
            assert page.locator("#error").inner_text() == ""
        finally:
            ctx.close()


def test_method_selector_is_built_from_get_methods(server):
    import json
    import urllib.request

    url, ref, root = server
    offered = json.loads(urllib.request.urlopen(url + "/methods").read())
    with playwright_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(root / "profile2"), executable_path=CHROMIUM, args=FLAGS,
                                                   headless=True)
        try:
            page = ctx.new_page()
            page.goto(url + "/")
            page.wait_for_function("document.querySelectorAll('#method option').length > 0", timeout=10000)
            options = page.eval_on_selector_all("#method option", "os => os.map(o => o.value)")
            assert options == [m["name"] for m in offered["methods"]]
            assert page.locator("#method").input_value() == offered["default"]
            page.select_option("#method", "image")  # no alpha: the slider is hidden
            assert page.locator("#alpha-label").is_hidden()
            page.select_option("#method", "slerp")
            assert page.locator("#alpha-label").is_visible()
        finally:
            ctx.close()
