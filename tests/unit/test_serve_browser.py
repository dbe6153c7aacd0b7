"""The search page driven in headless Chromium (Debian's package) through Playwright's Python API.

Playwright's own browser download cannot run here: the test launches /usr/bin/chromium with
``executable_path`` and the flags that keep it off the network. It skips, saying why, only where
no Chromium is installed (``scripts/setup_env.sh`` installs it where apt is available).
"""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi", reason="needs the 'serve' extra")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the dev extra (playwright)")

from provider_helpers import photo  # noqa: E402
from serve_helpers import build_store, png_bytes, running  # noqa: E402

from llm_compression.serve import ServeConfig, create_app  # noqa: E402

CHROMIUM = os.environ.get("LLMC_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]  # fmt: skip
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) or shutil.which("chromium")),
    reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (scripts/setup_env.sh does)",
)


@pytest.fixture(scope="module")
def page_url(files, tmp_path_factory):
    store = build_store(tmp_path_factory.mktemp("serve_page_store"), files)
    with running(create_app(ServeConfig(store=store))) as url:
        yield url


@pytest.fixture
def page(tmp_path):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, timeout=TIMEOUT_MS)
        context = browser.new_context(viewport={"width": 1000, "height": 900})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        browser.close()
        assert not errors, errors


def results(page) -> list[tuple[str, float, str]]:
    rows = page.locator("#results li.result")
    return [
        (r.locator(".title").inner_text(), float(r.get_attribute("data-score")),
         r.locator(".tag").inner_text())
        for r in rows.all()
    ]  # fmt: skip


def test_text_query_then_image_upload(page, page_url, tmp_path):
    page.goto(page_url + "/")
    page.wait_for_function("document.getElementById('store-info').textContent.includes('text')")
    page.fill("#query", "a cat sleeping on a sofa")
    page.select_option("#modality", "text")
    page.click("#search")
    page.wait_for_selector("#results li.result")
    hits = results(page)
    assert hits[0][0] == "cat.txt" and hits[0][2] == "text"
    assert [s for _, s, _ in hits] == sorted((s for _, s, _ in hits), reverse=True)
    assert page.locator("#results li.result .snippet").first.inner_text() == (
        "a cat sleeping on a sofa"
    )
    page.screenshot(path=str(tmp_path / "text_query.png"), full_page=True)

    image = tmp_path / "query.png"
    image.write_bytes(png_bytes(photo("coffee")))
    page.select_option("#modality", "")
    page.evaluate("document.getElementById('results').replaceChildren()")
    page.set_input_files("#file", str(image))
    page.wait_for_function("document.getElementById('status').textContent.includes('image query')")
    page.wait_for_selector("#results li.result img")
    hits = results(page)
    assert hits[0][0] == "coffee.png" and hits[0][2] == "image"
    page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete"
                           " && i.naturalWidth > 0)")  # fmt: skip
    shot = tmp_path / "image_query.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshots in {tmp_path}")


def test_errors_show_on_the_page(page, page_url):
    page.goto(page_url + "/")
    page.fill("#query", "anything")
    page.select_option("#modality", "audio")
    page.click("#search")
    page.wait_for_selector("#status.error")
    assert "audio" in page.inner_text("#status")
