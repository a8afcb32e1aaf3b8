"""The page in headless Chromium (Debian's package, driven by playwright): upload, analyse, see every output.

Skips when /usr/bin/chromium is missing, except under CI (the CI environment variable set), where it fails.
Screenshots go to artifacts/: app-inspect.png (an analysed image) and app-review.png (an audit under review).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:::gradio.queueing")]

CHROMIUM = Path(os.environ.get("SPML_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser_page(request: pytest.FixtureRequest) -> Iterator:
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} is missing: run .ci/install_browser.sh (Debian's chromium package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    app_url = request.getfixturevalue("app_url")  # launched only once the browser is known to be there

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        # Offline: anything the app does not serve (web fonts, telemetry) is refused at once, not awaited.
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(app_url)
                   else route.abort())
        page.goto(app_url, wait_until="load")
        page.wait_for_selector("#analyse")
        yield page
        browser.close()


def _upload(page, path: Path) -> None:
    page.locator("#input-image input[type=file]").set_input_files(str(path))
    page.locator("#input-image img").first.wait_for()


def _image_src(page, elem_id: str) -> str:
    image = page.locator(f"#{elem_id} img").first
    image.wait_for()
    return image.get_attribute("src") or ""


def test_page_explains_the_method_and_the_checkpoint(browser_page):
    page = browser_page
    assert page.locator("#method-figure svg").count() == 1
    info = page.locator("#checkpoint-info").inner_text()
    assert "Loaded:" in info and "synthetic" in info and "mAP" in info


def test_upload_analyse_and_see_every_output(browser_page, app_inputs):
    page = browser_page
    _upload(page, app_inputs["scene"].path)
    page.locator("#analyse").click()
    # A header row and 9 class rows: every class but the positive.
    page.locator('#table [role=grid][aria-rowcount="10"]').wait_for()
    page.locator("#summary").get_by_text("Positive:").wait_for()
    labels = page.locator("#labels").inner_text()
    assert sum(name in labels for name in ("circle", "square", "star", "ring", "heart")) >= 4
    for elem_id in ("cam", "masked", "crop"):
        assert _image_src(page, elem_id), f"no image in #{elem_id}"
    assert "rejected" in page.locator("#table thead").inner_text()
    page.wait_for_timeout(500)  # let the images finish painting before the screenshot
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app-inspect.png"), full_page=True)


def test_bad_file_shows_a_message_and_the_next_request_works(browser_page, app_inputs):
    page = browser_page
    _upload(page, app_inputs["scene"].path)  # replaced below through the same file input
    page.locator("#input-image input[type=file]").set_input_files(str(app_inputs["not-an-image"].path))
    page.locator("#analyse").click()
    page.get_by_text("not an image file").first.wait_for()
    page.locator("#examples button").first.click()
    page.locator("#summary").get_by_text("true labels").wait_for()


def _review_status(page, text: str) -> None:
    page.locator("#review-status").get_by_text(text).wait_for()
    page.wait_for_timeout(300)  # the event settles: a key pressed while it is pending is ignored by design


def test_audit_and_review_with_keys_survives_a_reload(browser_page, audit_zips, app_audits):
    page = browser_page
    page.get_by_role("tab", name="Audit").click()
    page.locator("#audit-zip input[type=file]").set_input_files(str(audit_zips["good"]))
    page.locator("#audit-zip").get_by_text("shapes.zip").wait_for()
    page.locator("#audit-run").click()
    _review_status(page, "Decided 0")
    assert page.locator("#audit-gallery img").count() >= 6
    assert "Suspect 1 of" in page.locator("#review-question").inner_text()
    page.keyboard.press("c")
    _review_status(page, "Decided 1")
    page.keyboard.press("d")
    _review_status(page, "Decided 2")
    assert "Suspect 3 of" in page.locator("#review-question").inner_text()
    page.keyboard.press("ArrowLeft")
    page.locator("#review-question").get_by_text("Suspect 2 of").wait_for()
    page.screenshot(path=str(ARTIFACTS / "app-review.png"), full_page=True)
    page.reload(wait_until="load")
    page.get_by_role("tab", name="Audit").click()
    _review_status(page, "Decided 2")  # restored from the browser's stored audit id and the decision store
    page.locator("#review-export").click()
    page.locator("#review-export-message").get_by_text("1 labels added and 1 classes").wait_for()
    page.locator('#review-file a[download="train.csv"]').wait_for()
    stores = list(app_audits.glob("*/report.decisions.json"))
    assert len(stores) == 1 and '"confirm"' in stores[0].read_text() and '"dismiss"' in stores[0].read_text()
