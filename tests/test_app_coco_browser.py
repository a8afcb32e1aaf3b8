"""The page on the COCO model (checkpoints/coco: 80 classes, real multi-label photos) in headless Chromium: a
photo with several objects analysed, every predicted label's CAM and the rejected labels shown; and a small
COCO-format upload (photos of ../shared/coco and their instances.json) audited through the Audit tab and
reviewed. A module of its own: playwright drives one browser at a time."""

from __future__ import annotations

import pytest
from browser import audit_zip, check_gallery_tiles, image_src, open_page, require_chromium, review_status, upload
from conftest import app_key, served_app

from spml.app.assets import CAM_GALLERY_LARGE, CAM_GALLERY_SMALL

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:::gradio.queueing")]


def test_the_coco_model_on_a_photo_and_a_coco_upload(coco_checkpoint, shared_coco_zip, tmp_path_factory, tmp_path):
    require_chromium()
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    photo = tmp_path / "astronaut.png"  # scikit-image's photo of Eileen Collins: a person, a flag, a shuttle
    Image.fromarray(skimage_data.astronaut()).save(photo)
    requests: list[str] = []
    key = app_key(coco_checkpoint)
    with served_app(key, tmp_path_factory.mktemp("coco-audits")) as url, open_page(url, requests) as page:
        assert f"Loaded: {key}" in page.locator("#checkpoint-info").inner_text()
        upload(page, photo)
        page.locator("#positive input").fill("")
        page.locator("#analyse").click()
        page.locator("#summary").get_by_text("the top prediction").wait_for()
        assert "person" in page.locator("#labels").inner_text()
        tiles = page.locator("#cam-gallery button.thumbnail-item")
        tiles.first.wait_for()
        count = tiles.count()
        shown = check_gallery_tiles(page, CAM_GALLERY_LARGE if count <= 2 else CAM_GALLERY_SMALL)
        assert "person" in [tile["text"].rsplit(" ", 1)[0] for tile in shown]
        for elem_id in ("cam", "masked", "crop"):
            assert image_src(page, elem_id), f"no image in #{elem_id}"
        summary = page.locator("#summary").inner_text()
        assert "Rejected" in summary  # the rule's verdict, whichever it is, is stated
        # 80 classes: a header row and one row for every class but the positive.
        page.locator('#table [role=grid][aria-rowcount="80"]').wait_for()

        # 16 photos without a val.csv: the protocol keeps 20% of them for validation, 13 are audited.
        audit_zip(page, shared_coco_zip, audited=13)
        assert "street/train/" in page.locator("#review-question").inner_text()
        assert image_src(page, "review-cam")
        page.keyboard.press("c")
        review_status(page, "Decided 1")
        page.locator("#review-export").click()
        page.locator("#review-export-message").get_by_text("1 labels added").wait_for()
    assert [u for u in requests if not u.startswith((url, "data:", "blob:"))] == []
