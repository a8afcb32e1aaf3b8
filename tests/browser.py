"""Headless Chromium for the browser tests (Debian's package, driven by playwright): open a page of the app,
upload, read images, wait for the review, take screenshots.

Chromium missing: the tests skip, except under CI (the CI environment variable set), where they fail. A page
refuses every request to another host than the app's own, and records every URL it asked for in ``requests``.
Screenshots go to $SPML_SCREENSHOTS when set (`SPML_SCREENSHOTS=artifacts` refreshes the committed ones), else
to a temporary folder, so that a test run leaves the checkout as it was.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = Path(os.environ.get("SPML_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("SPML_SCREENSHOTS") or Path(tempfile.gettempdir()) / "spml-screenshots")
TIMEOUT_MS = 60_000


def require_chromium() -> None:
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} is missing: run .ci/install_browser.sh (Debian's chromium package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def open_page(app_url: str, requests: list[str] | None = None) -> Iterator:
    """A Chromium page on ``app_url``, loaded, offline but for the app; ``requests`` collects every URL."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            if requests is not None:
                page.on("request", lambda request: requests.append(request.url))
            # Offline: anything the app does not serve (web fonts, telemetry) is refused at once, not awaited.
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(app_url)
                       else route.abort())
            page.goto(app_url, wait_until="load")
            page.wait_for_selector("#analyse")
            yield page
        finally:
            browser.close()


def screenshot(page, name: str) -> None:
    """The whole page as a small PNG in ARTIFACTS (256 colours, at most 900 px wide): committed, so kept small."""
    page.wait_for_timeout(500)  # let the images finish painting
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    if shot.width > 900:
        shot = shot.resize((900, round(shot.height * 900 / shot.width)), Image.Resampling.LANCZOS)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot.quantize(256).save(ARTIFACTS / name, optimize=True)


def upload(page, path: Path) -> None:
    page.locator("#input-image input[type=file]").set_input_files(str(path))
    page.locator("#input-image img").first.wait_for()


def image_src(page, elem_id: str) -> str:
    image = page.locator(f"#{elem_id} img").first
    image.wait_for()
    return image.get_attribute("src") or ""


def review_status(page, text: str) -> None:
    page.locator("#review-status").get_by_text(text).wait_for()
    page.wait_for_timeout(300)  # the event settles: a key pressed while it is pending is ignored by design


def audit_zip(page, archive: Path, audited: int | None = None) -> None:
    """The Audit tab's audit of the data set zip ``archive``, run and waiting for its first review decision
    (and, given ``audited``, for the summary's count of audited images)."""
    page.get_by_role("tab", name="Audit").click()
    page.locator("#audit-zip input[type=file]").set_input_files(str(archive))
    page.locator("#audit-zip").get_by_text(archive.name).wait_for()
    page.locator("#audit-run").click()
    if audited is not None:
        page.locator("#audit-summary").get_by_text(f"Audited {audited} images").wait_for()
    review_status(page, "Decided 0")


def open_example_audit(page) -> None:
    """The Audit tab's one-click example audit, run and waiting for its first review decision."""
    page.get_by_role("tab", name="Audit").click()
    page.locator("#audit-example").click()
    page.locator("#audit-summary").get_by_text("suspects found").wait_for()
    review_status(page, "Decided 0")


def gallery_tiles(page) -> list[dict]:
    """Each tile of the CAM gallery: its map's box, its caption's box and text (page pixels)."""
    tiles = []
    for item in page.locator("#cam-gallery button.thumbnail-item").all():
        image, caption = item.locator("img"), item.locator(".caption-label")
        tiles.append({"image": image.bounding_box(), "caption": caption.bounding_box(),
                      "text": caption.inner_text()})
    return tiles


def check_gallery_tiles(page, side: int) -> list[dict]:
    """The gallery's tiles: each map a square ``side`` px wide (within 2 px: borders), its caption
    ("label probability") right under it, none stretched to the column."""
    tiles = gallery_tiles(page)
    assert tiles, "no CAM in the gallery"
    for tile in tiles:
        image, caption = tile["image"], tile["caption"]
        assert abs(image["width"] - side) <= 2 and abs(image["height"] - image["width"]) <= 1, tile
        assert caption["y"] >= image["y"] + image["height"] - 1, f"the caption is not under the map: {tile}"
        name, probability = tile["text"].rsplit(" ", 1)
        assert name and 0.0 <= float(probability) <= 1.0
    return tiles
