"""End to end: `simsearch serve` in a subprocess, the page in headless Debian Chromium."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_server import ITEM, serve_process

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ALL_THUMBNAILS_LOADED = """() => {
    const images = [...document.querySelectorAll('#results .hit img')];
    return images.length > 0 && images.every((i) => i.complete && i.naturalWidth === 28);
}"""

pytestmark = pytest.mark.slow


def _browser_or_skip() -> None:
    """Debian's chromium (never a downloaded browser); in CI its absence is a failure."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the playwright package"
    else:
        if CHROMIUM.is_file():
            return
        missing = str(CHROMIUM)
    if os.environ.get("CI"):
        pytest.fail(f"CI must install {missing} (scripts/test.sh does)")
    pytest.skip(f"{missing} is not installed")


@pytest.fixture(scope="module")
def server(pca_index_dir: Path) -> Iterator[str]:
    with serve_process(pca_index_dir) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    """A fresh page that may only talk to the test server (anything else fails the test)."""
    elsewhere: list[str] = []
    errors: list[str] = []

    def only_loopback(route: Any) -> None:
        if route.request.url.startswith(server):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context = browser.new_context(viewport={"width": 1200, "height": 800})
    try:
        tab = context.new_page()
        tab.route("**/*", only_loopback)
        tab.set_default_timeout(20_000)
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.goto(server + "/")
        yield tab
    finally:
        context.close()
    assert not errors, errors
    assert not elsewhere, f"the page tried to load {elsewhere}"


def _hits(page: Any) -> list[list[str]]:
    cards = page.locator("#results .hit")
    return [
        [cards.nth(i).locator(cls).inner_text() for cls in (".rank", ".label", ".sim")]
        for i in range(cards.count())
    ]


def test_upload_shows_the_query_and_its_neighbours(
    page: Any, item_png: Path, tmp_path: Path
) -> None:
    page.wait_for_function("document.querySelector('#status').textContent.includes('400')")
    page.set_input_files("#file", str(item_png))
    page.wait_for_function(ALL_THUMBNAILS_LOADED)
    hits = _hits(page)
    assert len(hits) == 10
    assert [hit[0] for hit in hits] == [f"#{rank}" for rank in range(1, 11)]
    assert hits[0][2] == "1.000"  # the item itself
    assert all(label.strip() for _, label, _ in hits)
    assert page.locator("#results .hit img").first.get_attribute("alt") == ITEM
    # The query as the model sees it: the 28x28 preprocessed image.
    assert page.eval_on_selector("#seen", "i => i.naturalWidth") == 28
    assert page.locator("#error").is_hidden()
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

    # k is adjustable: the same query is searched again.
    page.fill("#k", "3")
    page.dispatch_event("#k", "change")
    page.wait_for_function("document.querySelectorAll('#results .hit').length === 3")
    page.wait_for_function(ALL_THUMBNAILS_LOADED)


def test_the_latest_search_wins(page: Any, item_png: Path) -> None:
    """Changing k while a search is running: the older answer must not overwrite the newer."""
    page.set_input_files("#file", str(item_png))
    for k in ("7", "2"):  # without waiting for the previous answer
        page.fill("#k", k)
        page.dispatch_event("#k", "change")
    page.wait_for_function(ALL_THUMBNAILS_LOADED)
    page.wait_for_timeout(1000)  # time for a stale answer to arrive
    assert page.locator("#results .hit").count() == 2


def test_a_bad_file_shows_a_clear_error(page: Any, tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.set_input_files("#file", str(bad))
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "notes.txt" in error.inner_text() and "image" in error.inner_text()
    assert page.locator("#results .hit").count() == 0


def test_random_catalog_item_finds_itself(page: Any) -> None:
    page.click("#random")
    page.wait_for_function(ALL_THUMBNAILS_LOADED)
    hits = _hits(page)
    assert hits[0][0] == "#1" and hits[0][2] == "1.000"
    query = page.locator("#query-name").inner_text()
    assert query.startswith("fashion-mnist/train/")


@pytest.mark.parametrize("gesture", ["paste", "drop"])
def test_paste_and_drop(page: Any, item_png: Path, gesture: str) -> None:
    data = list(item_png.read_bytes())
    page.evaluate(
        """([gesture, bytes]) => {
            const file = new File([new Uint8Array(bytes)], 'item.png', {type: 'image/png'});
            const transfer = new DataTransfer();
            transfer.items.add(file);
            const event = gesture === 'paste'
                ? new ClipboardEvent('paste', {clipboardData: transfer, bubbles: true})
                : new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true});
            (gesture === 'paste' ? document : document.querySelector('#drop'))
                .dispatchEvent(event);
        }""",
        [gesture, data],
    )
    page.wait_for_function(ALL_THUMBNAILS_LOADED)
    assert page.locator("#results .hit img").first.get_attribute("alt") == ITEM


def test_api_docs_render_offline(page: Any, server: str) -> None:
    page.goto(server + "/docs")
    page.wait_for_selector(".swagger-ui .opblock-summary-path")
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/api/search" in " ".join(paths)


@pytest.fixture(scope="module")
def small_limit_server(pca_index_dir: Path) -> Iterator[str]:
    with serve_process(pca_index_dir, "--max-upload-mb", "0.01") as url:  # 10,485 bytes
        yield url


def test_the_page_takes_its_limits_from_health(
    browser: Any, small_limit_server: str, item_png: Path, tmp_path: Path
) -> None:
    """k's maximum and the upload limit come from /api/health; an image over the limit is
    refused by the page itself, before any byte is sent (a browser would send all of it first)."""
    import httpx
    import numpy as np
    from PIL import Image

    health = httpx.get(f"{small_limit_server}/api/health").json()
    context = browser.new_context()
    try:
        tab = context.new_page()
        tab.set_default_timeout(20_000)
        searches: list[str] = []
        tab.on("request", lambda r: searches.append(r.url) if "/api/search" in r.url else None)
        tab.goto(small_limit_server + "/")
        tab.wait_for_function("document.querySelector('#status').textContent.includes('400')")
        assert tab.get_attribute("#k", "max") == str(health["max_k"])

        noise = np.random.default_rng(0).integers(0, 255, (120, 120, 3), np.uint8)
        big = tmp_path / "noise.png"
        Image.fromarray(noise).save(big)
        assert big.stat().st_size > health["max_upload_bytes"]
        tab.set_input_files("#file", str(big))
        error = tab.locator("#error")
        error.wait_for(state="visible")
        assert "noise.png" in error.inner_text()
        assert f"{health['max_upload_bytes']:,} bytes upload limit" in error.inner_text()
        tab.wait_for_timeout(300)
        assert searches == []

        tab.fill("#k", "5000")  # over max_k: the page asks for max_k
        tab.set_input_files("#file", str(item_png))
        tab.wait_for_function("document.querySelectorAll('#results .hit').length === 400")
        assert searches and searches[-1].endswith(f"/api/search?k={health['max_k']}")
        assert tab.locator("#error").is_hidden()
    finally:
        context.close()
