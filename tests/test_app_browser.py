"""The page in headless Chromium (Debian's package, driven by playwright): upload, analyse, see every output,
on a fixture checkpoint (a one-epoch model of shapes: the behaviour, not the product; the product's screenshots
are tests/test_screenshots.py's). The page must not reach any host but the app's own: every request is recorded
and checked at the end.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser import (
    audit_zip,
    check_gallery_tiles,
    image_src,
    open_example_audit,
    open_page,
    require_chromium,
    review_status,
    upload,
)

from spml.app.assets import CAM_GALLERY_SMALL

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:::gradio.queueing")]

REQUESTS: list[str] = []  # every URL the page asked for, from its first load on


@pytest.fixture(scope="module")
def browser_page(request: pytest.FixtureRequest) -> Iterator:
    require_chromium()
    app_url = request.getfixturevalue("app_url")  # launched only once the browser is known to be there
    with open_page(app_url, REQUESTS) as page:
        yield page


def test_page_explains_the_method_and_the_checkpoint(browser_page):
    page = browser_page
    assert page.locator("#method-figure svg").count() == 1
    info = page.locator("#checkpoint-info").inner_text()
    assert "Loaded:" in info and "synthetic" in info and "mAP" in info
    assert "Classes it knows: circle, square, triangle" in info, "the classes show before any upload"


def test_upload_analyse_and_see_every_output(browser_page, app_inputs):
    page = browser_page
    upload(page, app_inputs["scene"].path)
    page.locator("#analyse").click()
    # A header row and 9 class rows: every class but the positive.
    page.locator('#table [role=grid][aria-rowcount="10"]').wait_for()
    page.locator("#summary").get_by_text("Positive:").wait_for()
    labels = page.locator("#labels").inner_text()
    assert sum(name in labels for name in ("circle", "square", "star", "ring", "heart")) >= 4
    for elem_id in ("cam", "masked", "crop"):
        assert image_src(page, elem_id), f"no image in #{elem_id}"
    assert "rejected" in page.locator("#table thead").inner_text()


def test_cam_gallery_shows_each_label_and_a_click_makes_it_the_positive(browser_page, app_inputs):
    page = browser_page
    upload(page, app_inputs["scene"].path)
    page.locator("#positive input").fill("")
    page.locator("#analyse").click()
    page.locator("#summary").get_by_text("the top prediction").wait_for()
    thumbnails = page.locator("#cam-gallery button.thumbnail-item")
    thumbnails.first.wait_for()
    assert 3 <= thumbnails.count() <= 8  # the fixture model's logits spread: many labels above 0.5
    # Many labels: a row of thumbnails, each a square of the small size with its caption under it.
    check_gallery_tiles(page, CAM_GALLERY_SMALL)
    captions = page.locator("#cam-gallery .caption-label").all_inner_texts()
    picked = captions[-1].split()[0]
    thumbnails.last.click()
    page.locator("#summary").get_by_text(f"{picked} (as given").wait_for()
    assert page.locator("#positive input").input_value() == picked


def test_bad_file_shows_a_message_and_the_next_request_works(browser_page, app_inputs):
    page = browser_page
    upload(page, app_inputs["scene"].path)  # replaced below through the same file input
    page.locator("#input-image input[type=file]").set_input_files(str(app_inputs["not-an-image"].path))
    page.locator("#analyse").click()
    page.get_by_text("not an image file").first.wait_for()
    page.locator("#examples button").first.click()
    page.locator("#summary").get_by_text("true labels").wait_for()


def test_audit_and_review_with_keys_survives_a_reload(browser_page, audit_zips, app_audits):
    page = browser_page
    page.get_by_role("tab", name="Audit").click()
    page.locator("#audit-zip input[type=file]").set_input_files(str(audit_zips["good"]))
    page.locator("#audit-zip").get_by_text("shapes.zip").wait_for()
    page.locator("#audit-run").click()
    review_status(page, "Decided 0")
    assert page.locator("#audit-gallery img").count() >= 6
    assert "Suspect 1 of" in page.locator("#review-question").inner_text()
    page.keyboard.press("c")
    review_status(page, "Decided 1")
    page.keyboard.press("d")
    review_status(page, "Decided 2")
    assert "Suspect 3 of" in page.locator("#review-question").inner_text()
    page.keyboard.press("ArrowLeft")
    page.locator("#review-question").get_by_text("Suspect 2 of").wait_for()
    page.reload(wait_until="load")
    page.get_by_role("tab", name="Audit").click()
    review_status(page, "Decided 2")  # restored from the browser's stored audit id and the decision store
    page.locator("#review-export").click()
    page.locator("#review-export-message").get_by_text("1 labels added and 1 classes").wait_for()
    page.locator('#review-file a[download="train.csv"]').wait_for()
    stores = list(app_audits.glob("*/report.decisions.json"))
    assert len(stores) == 1 and '"confirm"' in stores[0].read_text() and '"dismiss"' in stores[0].read_text()


def test_one_click_example_audit_and_its_review(browser_page):
    page = browser_page
    open_example_audit(page)
    question = page.locator("#review-question").inner_text()
    assert "Suspect 1 of" in question and "First: where the model sees a" in question, "the suspect's own CAM leads"
    assert image_src(page, "review-cam") and image_src(page, "review-positive")
    assert page.locator("#audit-gallery img").count() == 12
    page.keyboard.press("c")
    review_status(page, "Decided 1")


def test_audit_a_coco_zip(browser_page, coco_zip):
    page = browser_page
    audit_zip(page, coco_zip, audited=10)  # 12 images without a val.csv: the protocol keeps 2 for validation
    assert "shapes/train/" in page.locator("#review-question").inner_text()


def test_load_a_hub_checkpoint_and_see_the_other_world_notice(browser_page, offline_hub_checkpoint,
                                                              calibrated_checkpoint, tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    page = browser_page
    page.get_by_role("tab", name="Inspect").click()
    page.locator("#checkpoint-source input, #checkpoint-source textarea").first.fill(offline_hub_checkpoint)
    page.locator("#checkpoint-load").click()
    page.locator("#checkpoint-info").get_by_text("owner/shapes").wait_for()
    assert page.locator('#checkpoint-info a[href="https://huggingface.co/owner/shapes"]').count() == 1
    photo = tmp_path / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(photo)
    upload(page, photo)
    page.locator("#analyse").click()
    page.locator("#world-notice").get_by_text("does not look like the images this model was trained on").wait_for()
    assert "hf://OWNER/NAME" in page.locator("#world-notice").inner_text()
    from spml.data.generic import load_dataset

    scene = load_dataset(calibrated_checkpoint.parent / "world").split("train").images[0]  # of its world
    upload(page, scene)
    page.locator("#analyse").click()
    page.locator("#summary").get_by_text("Analysed at 64×64").wait_for()
    assert page.locator("#world-notice").inner_text().strip() == ""


def test_no_request_left_the_machine(browser_page, app_url):
    assert REQUESTS, "the page made requests"
    outside = [url for url in REQUESTS if not url.startswith((app_url, "data:", "blob:"))]
    assert outside == [], f"requests to other hosts: {outside[:5]}"
