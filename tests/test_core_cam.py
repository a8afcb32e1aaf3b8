"""Class maps out of the forward pass, their normalisation, masks, boxes, crops and overlays."""

import numpy as np
import pytest
import torch

from spml.cam import (
    apply_masks,
    cam_boxes,
    cam_masks,
    crop_to_box,
    heatmap_overlay,
    mask_box,
    mask_boxes,
    masked_display,
    normalize_cams,
    upsample_maps,
)
from spml.data.transforms import IMAGENET_MEAN
from spml.model import create_model


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# ----------------------------------------------------------------------------- maps = logits


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("arch,options,size", [("compact", {"width": 8}, 32), ("resnet18", {}, 64)])
def test_pooled_class_maps_with_bias_equal_the_logits(arch, options, size, batch_size, any_device):
    torch.manual_seed(0)
    model = create_model(arch, 5, **options).eval().to(any_device)
    with torch.no_grad():
        model.head.bias.normal_()  # a non-zero bias, which the maps must include
        output = model(torch.randn(batch_size, 3, size, size, device=any_device))
        maps = model.class_maps(output)
        assert maps.shape == (batch_size, 5, *output.features.shape[-2:])
        assert torch.allclose(maps.mean(dim=(2, 3)), output.logits, atol=1e-5)
        # without the bias (the CALR code's maps) they pool to the logits less the bias
        unbiased = model.class_maps(output, bias=False).mean(dim=(2, 3))
        assert torch.allclose(unbiased + model.head.bias, output.logits, atol=1e-5)
        # one class per image: the same maps, picked
        classes = torch.arange(batch_size, device=any_device) % 5
        picked = model.class_maps(output, classes)
        assert picked.shape == (batch_size, *output.features.shape[-2:])
        assert torch.allclose(picked, maps[torch.arange(batch_size), classes], atol=1e-6)


# ----------------------------------------------------------------------------- normalisation


def test_normalize_image_mode_by_hand():
    cams = t([[[1.0, 3.0], [2.0, 5.0]], [[-2.0, -2.0], [0.0, -1.0]], [[4.0, 4.0], [4.0, 4.0]]])
    out = normalize_cams(cams, "image")
    assert torch.allclose(out[0], t([[0.0, 0.5], [0.25, 1.0]]))  # (x - 1) / 4
    assert torch.allclose(out[1], t([[0.0, 0.0], [1.0, 0.5]]))  # (x + 2) / 2
    assert torch.equal(out[2], torch.zeros(2, 2))  # a flat map: 0, not NaN
    for i in range(2):
        assert float(out[i].min()) == 0.0 and float(out[i].max()) == pytest.approx(1.0)


def test_normalize_image_mode_ignores_the_rest_of_the_batch():
    torch.manual_seed(0)
    cams = torch.randn(4, 3, 5)
    out = normalize_cams(cams, "image")
    for i in range(4):
        assert torch.allclose(out[i], normalize_cams(cams[i:i + 1], "image")[0])


def test_normalize_calr_mode_by_hand():
    # per pixel across the batch: (cam - min_b) / (max_b - min_b)
    # pixel (0,0): 1, 3, 5 -> 0, 2, 4 -> / 4 -> 0, 0.5, 1
    # pixel (0,1): 2, 2, 6 -> 0, 0, 4 -> / 4 -> 0, 0, 1
    # pixel (1,0): 7, 7, 7 -> 0, 0, 0 -> equal everywhere: 0
    # pixel (1,1): 0, -1, 3 -> 1, 0, 4 -> / 4 -> 0.25, 0, 1
    cams = t([[[1.0, 2.0], [7.0, 0.0]], [[3.0, 2.0], [7.0, -1.0]], [[5.0, 6.0], [7.0, 3.0]]])
    out = normalize_cams(cams, "calr")
    expected = t([[[0.0, 0.0], [0.0, 0.25]], [[0.5, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 1.0]]])
    assert torch.allclose(out, expected)
    assert not torch.isnan(out).any()


def test_normalize_ignore_mode_by_hand():
    # per pixel across the batch: (cam - min_b) / max_b, the maximum of the maps themselves
    # pixel (0,0): 1, 3, 5 -> 0, 2, 4 -> / 5 -> 0, 0.4, 0.8
    # pixel (0,1): 2, 2, 8 -> 0, 0, 6 -> / 8 -> 0, 0, 0.75
    # pixel (1,0): -4, -2, -1 -> 0, 2, 3 -> / -1 -> 0, -2, -3 (a negative maximum: nothing passes)
    # pixel (1,1): 0, -1, 4 -> 1, 0, 5 -> / 4 -> 0.25, 0, 1.25
    cams = t([[[1.0, 2.0], [-4.0, 0.0]], [[3.0, 2.0], [-2.0, -1.0]], [[5.0, 8.0], [-1.0, 4.0]]])
    out = normalize_cams(cams, "ignore")
    expected = t([[[0.0, 0.0], [0.0, 0.25]], [[0.4, 0.0], [-2.0, 0.0]], [[0.8, 0.75], [-3.0, 1.25]]])
    assert torch.allclose(out, expected)


@pytest.mark.parametrize("mode", ["calr", "ignore"])
def test_normalize_batch_modes_batch_of_one_fall_back_to_per_image(mode):
    cams = t([[[1.0, 3.0], [2.0, 5.0]]])
    out = normalize_cams(cams, mode)
    assert not torch.isnan(out).any()
    assert torch.allclose(out, normalize_cams(cams, "image"))


def test_normalize_refuses_bad_input():
    with pytest.raises(ValueError, match="unknown CAM normalisation"):
        normalize_cams(torch.zeros(2, 2, 2), "global")
    with pytest.raises(ValueError, match="shape"):
        normalize_cams(torch.zeros(2, 1, 2, 2))


# ----------------------------------------------------------------------------- masks


def test_upsample_is_bilinear_without_aligned_corners():
    # 2 -> 4 columns: output centres fall at source x = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (to 1)
    out = upsample_maps(t([[[0.0, 1.0], [0.0, 1.0]]]), (4, 4))
    assert out.shape == (1, 4, 4)
    assert torch.allclose(out[0], t([[0.0, 0.25, 0.75, 1.0]] * 4))


def test_upsample_a_window_is_the_part_of_the_whole_upsampled_map():
    """A letterboxed image fills a window of the input: upsampling that window to the image's size gives
    the values the whole map upsampled to the input's size has there (bilinear, align_corners=False)."""
    maps = torch.rand(2, 4, 5, generator=torch.Generator().manual_seed(0))
    whole = upsample_maps(maps, (40, 40))
    assert torch.allclose(upsample_maps(maps, (20, 40), (0.0, 0.25, 1.0, 0.75)), whole[:, 10:30], atol=1e-6)
    assert torch.allclose(upsample_maps(maps, (40, 30), (0.125, 0.0, 0.875, 1.0)), whole[:, :, 5:35], atol=1e-6)
    assert torch.equal(upsample_maps(maps, (40, 40), (0.0, 0.0, 1.0, 1.0)), whole)  # the whole input: as before


def test_cam_masks_threshold_strictly_and_upsample():
    cams = t([[[1.0, 3.0], [2.0, 5.0]]])  # normalised: [[0, 0.5], [0.25, 1]]
    assert cam_masks(cams, (2, 2), 0.4).tolist() == [[[False, True], [False, True]]]
    assert cam_masks(cams, (2, 2), 0.5).tolist() == [[[False, False], [False, True]]]  # 0.5 is not > 0.5
    columns = t([[[0.0, 1.0], [0.0, 1.0]]])
    masks = cam_masks(columns, (4, 6), 0.5)
    assert masks.shape == (1, 4, 6) and masks.dtype == torch.bool
    assert masks[0].tolist() == [[False, False, False, True, True, True]] * 4
    assert cam_masks(columns, (4, 4), 0.5)[0].tolist() == [[False, False, True, True]] * 4


def test_cam_masks_without_observed_positive_are_all_ones():
    torch.manual_seed(0)
    cams = torch.randn(3, 4, 4)
    has_positive = torch.tensor([True, False, True])
    for mode in ("image", "calr", "ignore"):
        masks = cam_masks(cams, (8, 8), 0.5, mode, has_positive)
        assert masks.shape == (3, 8, 8)
        assert bool(masks[1].all())
        # the others are the masks of a batch without image 1: it is left out of the batch statistics
        alone = cam_masks(cams[[0, 2]], (8, 8), 0.5, mode)
        assert torch.equal(masks[[0, 2]], alone)
        assert not bool(masks[0].all())
    none = cam_masks(cams, (8, 8), 0.5, "calr", torch.tensor([False, False, False]))
    assert bool(none.all())


def test_apply_masks_zeroes_outside_the_mask():
    images = torch.arange(1, 25, dtype=torch.float32).view(2, 3, 2, 2)
    masks = torch.tensor([[[True, False], [False, True]], [[False, False], [False, False]]])
    out = apply_masks(images, masks)
    assert out.dtype == images.dtype and out.shape == images.shape
    assert out[0, :, 0, 0].tolist() == images[0, :, 0, 0].tolist()
    assert out[0, :, 1, 1].tolist() == images[0, :, 1, 1].tolist()
    assert out[0, :, 0, 1].tolist() == [0.0, 0.0, 0.0]
    assert not out[1].any()


# ----------------------------------------------------------------------------- boxes and crops


def test_mask_box_and_crop_by_hand():
    mask = np.zeros((4, 5), dtype=bool)
    mask[1, 2] = mask[2, 3] = True
    box = mask_box(mask)
    assert box == (2, 1, 4, 3)  # left, top, right (exclusive), bottom (exclusive)
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    crop = crop_to_box(image, box)
    assert crop.shape == (2, 2, 3)
    assert np.array_equal(crop, image[1:3, 2:4])
    full = np.ones((4, 5), dtype=bool)
    assert mask_box(full) == (0, 0, 5, 4)
    assert np.array_equal(crop_to_box(image, mask_box(full)), image)


def test_empty_mask_has_no_box_and_an_empty_crop():
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    assert mask_box(np.zeros((4, 5), dtype=bool)) is None
    assert crop_to_box(image, None).shape == (0, 0, 3)


def test_masked_display_fills_with_the_mean_colour():
    image = np.full((2, 3, 3), 200, dtype=np.uint8)
    mask = np.array([[True, False, True], [False, False, True]])
    out = masked_display(image, mask, IMAGENET_MEAN)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert out[0, 0].tolist() == [200, 200, 200]
    assert out[0, 1].tolist() == [round(255 * m) for m in IMAGENET_MEAN]  # [124, 116, 104]
    assert masked_display(image, mask, (0.0, 0.5, 1.0))[1, 0].tolist() == [0, 128, 255]


def test_heatmap_overlay_shape_dtype_and_alpha():
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, size=(7, 9, 3)).astype(np.uint8)
    cam = rng.rand(7, 9).astype(np.float32)
    out = heatmap_overlay(image, cam)
    assert out.shape == (7, 9, 3) and out.dtype == np.uint8
    assert np.array_equal(heatmap_overlay(image, cam, alpha=0.0), image)
    hot = heatmap_overlay(np.zeros((1, 2, 3), np.uint8), np.array([[0.0, 1.0]]), alpha=1.0)
    assert hot[0, 0, 2] > hot[0, 0, 0]  # JET: low is blue
    assert hot[0, 1, 0] > hot[0, 1, 2]  # high is red
    # Hand-checked: JET maps 0 to RGB (0, 0, 128); half of it over grey 100 is (50, 50, 114).
    grey = np.full((1, 1, 3), 100, np.uint8)
    assert heatmap_overlay(grey, np.zeros((1, 1), np.float32)).tolist() == [[[50, 50, 114]]]


def test_cam_boxes_equal_the_boxes_of_the_upsampled_masks():
    """cam_boxes never upsamples a whole map, yet gives the box of cam_masks' region exactly, also for
    sizes that are not a multiple of the map's, flat maps (no region) and every threshold."""
    torch.manual_seed(0)
    for (h, w), size in [((8, 8), (128, 128)), ((4, 4), (32, 32)), ((7, 5), (100, 61)), ((3, 9), (17, 200))]:
        maps = torch.randn(30, h, w) ** 3
        maps[0] = 1.0  # flat: normalised to 0 everywhere, no region
        for threshold in (0.3, 0.5, 0.8):
            expected = mask_boxes(cam_masks(maps, size, threshold))
            assert torch.equal(cam_boxes(maps, size, threshold), expected)
            assert expected[0].tolist() == [-1, -1, -1, -1]
    mask = torch.zeros(1, 6, 9, dtype=torch.bool)
    mask[0, 2:4, 3:8] = True
    assert mask_boxes(mask).tolist() == [[3, 2, 8, 4]] and mask_box(mask[0].numpy()) == (3, 2, 8, 4)
