"""The README's and docs' screenshots: the app on the embedded checkpoint (checkpoints/demo), on images that
mean something, driven in headless Chromium like any browser test.

- app-inspect.png: the first held-out test scene of the demo's world with three or more shapes, analysed;
- app-other-world.png: a photo shipped by scikit-image (a cat), under the model of shapes: the notice;
- app-review.png: the one-click example audit, under review.

`SPML_SCREENSHOTS=artifacts HF_HUB_OFFLINE=1 python -m pytest tests/test_screenshots.py` refreshes the committed
pictures; without SPML_SCREENSHOTS they go to a temporary folder and the checkout stays as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import image_src, open_example_audit, open_page, require_chromium, review_status, screenshot, upload
from conftest import served_app

from spml.data.synthetic import render_scene

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.filterwarnings("ignore:::gradio.queueing")]

DEMO = "checkpoints/demo"  # as the app names its default: relative to app.py


def first_busy_test_scene(minimum: int = 3) -> tuple[int, list[str]]:
    """The index and labels of the demo world's first test scene with ``minimum`` shapes or more (seed 0, as
    `train/configs/demo.yaml` draws its world): chosen by its content, not by what the model says of it."""
    for index in range(600):
        _, labels, objects = render_scene(0, "test", index, 128)
        if len(objects) >= minimum:
            return index, labels
    raise AssertionError("no test scene with that many shapes")


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


def test_inspect_a_held_out_scene_of_the_demo_world(demo_page, tmp_path: Path):
    page = demo_page
    assert "Loaded: checkpoints/demo" in page.locator("#checkpoint-info").inner_text()
    index, labels = first_busy_test_scene()
    scene, _, _ = render_scene(0, "test", index, 128)
    scene.save(tmp_path / f"test-scene-{index}.png")
    upload(page, tmp_path / f"test-scene-{index}.png")
    page.locator("#analyse").click()
    page.locator("#summary").get_by_text("Positive:").wait_for()
    summary = page.locator("#summary").inner_text()
    assert any(f"Positive: {name}" in summary for name in labels), "the top prediction is a shape in the scene"
    for elem_id in ("cam", "masked", "crop"):
        assert image_src(page, elem_id), f"no image in #{elem_id}"
    screenshot(page, "app-inspect.png")


def test_a_real_photo_under_the_model_of_shapes_gets_the_notice(demo_page, tmp_path: Path):
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    page = demo_page
    photo = tmp_path / "chelsea.png"
    Image.fromarray(skimage_data.chelsea()).save(photo)
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
