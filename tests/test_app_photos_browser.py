"""The page on the model of real photos, the app's default (checkpoints/photos), in headless Chromium: a
click on a real-photo example shows every output. A module of its own: playwright drives one browser at a
time, and test_app_browser.py keeps its page open for all its tests.
"""

from __future__ import annotations

import pytest
from browser import check_gallery_tiles, image_src, open_page, require_chromium
from conftest import app_key, served_app

from spml.app.assets import CAM_GALLERY_LARGE

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:::gradio.queueing")]


def test_the_photos_model_on_a_real_photo_example(photos_checkpoint, tmp_path_factory):
    """The page on the model of real photos (the app's default): a click on the cat photo among its examples
    shows the predicted labels, the positive's CAM, the mask, the crop and the rejection table."""
    require_chromium()
    from spml.checkpoint import load_model

    classes = load_model(photos_checkpoint).classes
    requests: list[str] = []
    key = app_key(photos_checkpoint)
    with served_app(key, tmp_path_factory.mktemp("photos-audits")) as url, open_page(url, requests) as page:
        assert f"Loaded: {key}" in page.locator("#checkpoint-info").inner_text()
        assert "left to right: a cat (chelsea)" in page.locator("#examples").inner_text()
        page.locator("#examples button").first.click()
        page.locator("#summary").get_by_text("Example photograph: a cat").wait_for()
        # The block's title, then the top label in large type, then every label with its probability.
        assert page.locator("#labels").inner_text().splitlines()[:3] == ["Predicted labels", "cat", "cat"]
        assert "Positive: cat (the top prediction" in page.locator("#summary").inner_text()
        for elem_id in ("cam", "masked", "crop"):
            assert image_src(page, elem_id), f"no image in #{elem_id}"
        # A header row and a row for every class but the positive, with the rule's verdict.
        page.locator(f'#table [role=grid][aria-rowcount="{len(classes)}"]').wait_for()
        assert "rejected" in page.locator("#table thead").inner_text()
        assert page.locator("#world-notice").inner_text().strip() == "", "a real photo is of its world"
        # One predicted label: one large map, its caption under it, not stretched to the column's width.
        tiles = check_gallery_tiles(page, CAM_GALLERY_LARGE)
        assert [tile["text"].split()[0] for tile in tiles] == ["cat"]
    assert [u for u in requests if not u.startswith((url, "data:", "blob:"))] == []
