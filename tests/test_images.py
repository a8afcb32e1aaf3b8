"""load_image on real files of every awkward kind, made inside the test; and the transforms."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from spml.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageLoadError,
    eval_transform,
    load_image,
    strong_transform,
    weak_transform,
)
from spml.data.images import original_size
from spml.data.scenes import compose_scene
from spml.data.transforms import LETTERBOX_FILL, Letterbox, fit_box, input_region, input_window


def _rgb_at(image, xy):
    assert image.mode == "RGB"
    return image.getpixel(xy)


def _close(a, b, tol=6):
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


def test_plain_rgb_jpeg_and_bytes(tmp_path):
    path = tmp_path / "a.jpg"
    Image.new("RGB", (30, 20), (10, 200, 30)).save(path, quality=95)
    for source in (path, str(path), path.read_bytes()):
        image = load_image(source)
        assert image.size == (30, 20) and _close(_rgb_at(image, (5, 5)), (10, 200, 30))


def test_grayscale_and_alpha_kinds(tmp_path):
    Image.new("L", (8, 8), 77).save(tmp_path / "l.png")
    assert _rgb_at(load_image(tmp_path / "l.png"), (0, 0)) == (77, 77, 77)
    Image.new("1", (8, 8), 1).save(tmp_path / "bw.png")
    assert _rgb_at(load_image(tmp_path / "bw.png"), (0, 0)) == (255, 255, 255)
    la = Image.new("LA", (8, 8), (0, 0))  # black, fully transparent: white after compositing
    la.save(tmp_path / "la.png")
    assert _rgb_at(load_image(tmp_path / "la.png"), (0, 0)) == (255, 255, 255)
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 255))
    rgba.putpixel((1, 1), (255, 0, 0, 0))
    rgba.save(tmp_path / "rgba.png")
    image = load_image(tmp_path / "rgba.png")
    assert _rgb_at(image, (0, 0)) == (0, 0, 255) and _rgb_at(image, (1, 1)) == (255, 255, 255)
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    palette.putpixel((2, 2), 1)
    palette.save(tmp_path / "p.gif", transparency=0)
    image = load_image(tmp_path / "p.gif")
    assert _rgb_at(image, (0, 0)) == (255, 255, 255) and _rgb_at(image, (2, 2)) == (200, 0, 0)


def test_high_bit_depth_kinds(tmp_path):
    sixteen = np.full((6, 6), 65535, np.uint16)
    sixteen[0, 0] = 32896  # 128 * 257
    Image.fromarray(sixteen).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as stored:
        assert stored.mode.startswith("I")
    image = load_image(tmp_path / "g16.png")
    assert _rgb_at(image, (1, 1)) == (255, 255, 255) and _rgb_at(image, (0, 0)) == (128, 128, 128)
    Image.fromarray(np.full((4, 4), 1000, np.int32)).save(tmp_path / "i32.tif")
    assert _close(_rgb_at(load_image(tmp_path / "i32.tif"), (0, 0)), (4, 4, 4), tol=1)
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "f.tif")
    assert _close(_rgb_at(load_image(tmp_path / "f.tif"), (0, 0)), (128, 128, 128), tol=1)


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    red, green, blue = _rgb_at(load_image(tmp_path / "cmyk.jpg"), (8, 8))
    assert red > 200 and green < 60 and blue < 60


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(tmp_path / "anim.gif") as stored:
        assert stored.n_frames == 2
    red, _, blue = _rgb_at(load_image(tmp_path / "anim.gif"), (5, 5))
    assert red > 200 and blue < 50


def test_exif_rotation(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    image.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    upright = load_image(tmp_path / "rot.jpg")
    assert upright.size == (20, 40)
    assert _rgb_at(upright, (10, 3))[0] > 200 and _rgb_at(upright, (10, 35))[0] < 50  # band now on top


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((5, 7), 9, np.uint8), (9, 9, 9)),
        (np.full((5, 7, 1), 9, np.uint8), (9, 9, 9)),
        (np.full((5, 7, 3), 0.5, np.float32), (128, 128, 128)),
        (np.full((5, 7, 3), 200.0, np.float64), (200, 200, 200)),
        (
            np.concatenate([np.full((5, 7, 3), 0, np.uint8), np.full((5, 7, 1), 0, np.uint8)], 2),
            (255, 255, 255),
        ),
        (np.ones((5, 7), bool), (255, 255, 255)),
        (np.full((5, 7), 65535, np.uint16), (255, 255, 255)),
    ],
)
def test_arrays(array, expected):
    image = load_image(array)
    assert image.size == (7, 5) and _rgb_at(image, (3, 2)) == expected


def test_bad_arrays():
    with pytest.raises(ImageLoadError, match="channels last"):
        load_image(np.zeros((3, 5, 7), np.uint8).transpose(1, 2, 0)[:, :, :2])
    with pytest.raises(ImageLoadError):
        load_image(np.zeros(5, np.uint8))


def test_pil_input_is_not_modified():
    original = Image.new("RGBA", (5, 5), (0, 0, 0, 0))
    result = load_image(original)
    assert original.mode == "RGBA" and result.mode == "RGB" and result is not original
    rgb = Image.new("RGB", (5, 5))
    assert load_image(rgb) is not rgb


def _png_header_only(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    limit = Image.MAX_IMAGE_PIXELS
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header_only(100_000, 100_000))  # PIL itself raises DecompressionBombError
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(huge)
    big = tmp_path / "big.png"
    big.write_bytes(_png_header_only(8000, 6000))  # 48 MP: over our 40 MP default, under PIL's own limit
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(big)
    Image.new("RGB", (100, 100)).save(tmp_path / "small.png")
    with pytest.raises(ImageLoadError, match="10,000 pixels"):
        load_image(tmp_path / "small.png", max_pixels=5000)
    assert Image.MAX_IMAGE_PIXELS == limit  # no global state touched


def test_huge_but_allowed_images_are_downscaled(tmp_path):
    Image.new("RGB", (5000, 100), (1, 2, 3)).save(tmp_path / "wide.png")
    image = load_image(tmp_path / "wide.png")
    assert image.size == (4096, 82) and image.info["spml_downscaled_from"] == (5000, 100)
    Image.new("RGB", (6000, 400), (1, 2, 3)).save(tmp_path / "wide.jpg")
    image = load_image(tmp_path / "wide.jpg", max_side=1000)  # JPEG: decoded at a reduced scale first
    assert image.size == (1000, 67) and image.info["spml_downscaled_from"] == (6000, 400)
    assert original_size(image) == (6000, 400)
    small = load_image(np.zeros((10, 12, 3), np.uint8))
    assert "spml_downscaled_from" not in small.info and original_size(small) == (12, 10)


def test_broken_files(tmp_path):
    Image.new("RGB", (200, 200), (9, 9, 9)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"cut\.jpg: truncated or corrupt"):
        load_image(tmp_path / "cut.jpg")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageLoadError, match=r"notes\.txt: not an image"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(ImageLoadError, match=r"gone\.png: no such file"):
        load_image(tmp_path / "gone.png")
    with pytest.raises(ImageLoadError, match="bytes of image data"):
        load_image(b"\x89PNG garbage")
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(Image.open(io.BytesIO(data[: len(data) // 2])))


def test_letterbox_fits_the_image_whole_on_grey_and_says_where():
    # 200 x 100 into 64 x 64: scale 0.32, 64 x 32, centred: rows 16..47.
    assert fit_box(200, 100, 64, 64) == (0, 16, 64, 48) and fit_box(100, 200, 64, 64) == (16, 0, 48, 64)
    assert input_region(200, 100, 64, "letterbox") == (0, 16, 64, 48)
    assert input_region(200, 100, 64, "stretch") == (0, 0, 64, 64)
    assert input_window(200, 100, 64, "letterbox") == (0.0, 0.25, 1.0, 0.75)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8))
    boxed = np.asarray(Letterbox(64)(image))
    assert boxed.shape == (64, 64, 3)
    assert (boxed[:16] == LETTERBOX_FILL).all() and (boxed[48:] == LETTERBOX_FILL).all()
    assert np.array_equal(boxed[16:48], np.asarray(image.resize((64, 32), Image.BILINEAR)))
    # A photo scene of one photo is its letterbox, so a letterboxed photo looks like the training scenes.
    assert np.array_equal(boxed, np.asarray(compose_scene([image], 64)))
    square = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    assert torch.equal(eval_transform(32, resize="letterbox")(square), eval_transform(32)(square))  # a no-op on squares
    half = (0.5, 0.5, 0.5)  # the photos model's normalisation: its grey is ~0, what the masked pass blanks to
    assert eval_transform(64, half, half, resize="letterbox")(image)[:, :16].abs().max() < 0.01
    with pytest.raises(ValueError, match="unknown resize 'crop'; choose one of stretch, letterbox"):
        eval_transform(64, resize="crop")


def test_transforms():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    out = eval_transform(24)(image)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    assert torch.equal(out, eval_transform(24)(image))
    gray = eval_transform(8)(Image.new("RGB", (8, 8), tuple(round(255 * m) for m in IMAGENET_MEAN)))
    assert gray.abs().max() < 0.02  # the mean colour normalises to zero
    flips = {tuple(weak_transform(24)(image)[0, 0, :2].tolist()) for _ in range(30)}
    assert len(flips) == 2  # random horizontal flip, nothing else random
    strong = strong_transform(24, IMAGENET_MEAN, IMAGENET_STD)
    first = strong.transforms[0]
    assert isinstance(first, T.RandAugment) and (first.num_ops, first.magnitude) == (3, 5)
    assert any(isinstance(t, T.RandomHorizontalFlip) for t in strong.transforms[1:])
    assert strong(image).shape == (3, 24, 24)
