"""The README's and docs' screenshots: the app on its embedded checkpoints, on images that mean something, driven
in headless Chromium like any browser test.

- app-inspect.png: the model of real photos (checkpoints/photos, the app's default) on scikit-image's photo of
  a motorbike in a garage (stereo_motorcycle, left view), one of its examples: the labels, the positive's CAM,
  the mask, the crop and the labels the rule rejects. The model's top label is motorbike, so that is the
  positive; its CAM covers the motorbike, and the rule rejects nothing: no other class scores high with its
  evidence outside the motorbike (the model before this one rejected garbage_truck for the garage behind). The
  README's alt text says so, and this test checks that the picture still shows it;
- app-other-world.png: scikit-image's photo of a cat under the demo's model of shapes (checkpoints/demo): the
  notice;
- app-review.png: the one-click example audit on the demo, under review.

`SPML_SCREENSHOTS=artifacts HF_HUB_OFFLINE=1 python -m pytest tests/test_screenshots.py` refreshes the committed
pictures; without SPML_SCREENSHOTS they go to a temporary folder and the checkout stays as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import image_src, open_example_audit, open_page, require_chromium, review_status, screenshot, upload
from conftest import app_key, served_app

from spml.data.sample_photos import load_photo

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.filterwarnings("ignore:::gradio.queueing")]

DEMO = "checkpoints/demo"  # the model of the synthetic world, as the app names it: relative to app.py


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_app(DEMO, tmp_path_factory.mktemp("demo-audits")) as url:
        yield url


@pytest.fixture(scope="module")
def demo_page(request: pytest.FixtureRequest) -> Iterator:
    require_chromium()
    demo_url = request.getfixturevalue("demo_url")  # launched only once the browser is known to be there
    with open_page(demo_url) as page:
        yield page


# First in the module: playwright drives one browser at a time, and demo_page's stays open once opened.
def test_inspect_a_photo_of_a_motorbike_on_the_photos_model(photos_checkpoint, tmp_path_factory):
    require_chromium()
    key = app_key(photos_checkpoint)
    with served_app(key, tmp_path_factory.mktemp("photos-audits")) as url, open_page(url) as page:
        assert f"Loaded: {key}" in page.locator("#checkpoint-info").inner_text()
        page.locator("#examples button").nth(2).click()  # scikit-image's stereo_motorcycle, the third example
        page.locator("#summary").get_by_text("Example photograph: a motorbike").wait_for()
        summary = page.locator("#summary").inner_text()
        assert "Positive: motorbike (the top prediction" in summary
        assert "Rejected: none" in summary
        for elem_id in ("cam", "masked", "crop"):
            assert image_src(page, elem_id), f"no image in #{elem_id}"
        page.locator("#table thead").wait_for()
        screenshot(page, "app-inspect.png")


def test_a_real_photo_under_the_model_of_shapes_gets_the_notice(demo_page, tmp_path: Path):
    page = demo_page
    photo = tmp_path / "chelsea.png"
    load_photo("chelsea").save(photo)
    upload(page, photo)
    page.locator("#analyse").click()
    page.locator("#world-notice").get_by_text("does not look like the images this model was trained on").wait_for()
    screenshot(page, "app-other-world.png")


def test_the_example_audit_under_review(demo_page):
    page = demo_page
    open_example_audit(page)
    assert "Suspect 1 of" in page.locator("#review-question").inner_text()
    page.keyboard.press("c")
    review_status(page, "Decided 1")
    screenshot(page, "app-review.png")
