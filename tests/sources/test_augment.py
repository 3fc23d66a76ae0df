import torch

from stream_monitor.sources.augment import crop_boxes, jpeg_roundtrip, random_resized_crop_flip


def test_boxes_follow_torchvision_limits():
    g = torch.Generator().manual_seed(0)
    boxes = crop_boxes(g, 5000, 32, 40)
    top, left, h, w = boxes.unbind(1)
    assert (h >= 1).all() and (w >= 1).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 40).all()
    area = (h * w).float() / (32 * 40)
    assert area.min() >= 0.05 and area.max() <= 1.0
    assert 0.2 < area.median() < 0.8


def test_batched_crop_is_deterministic_and_flips_half():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) / 400
    a = random_resized_crop_flip(x, torch.Generator().manual_seed(1), 16)
    b = random_resized_crop_flip(x, torch.Generator().manual_seed(1), 16)
    assert a.shape == (2, 3, 16, 16) and a.dtype == torch.float32 and torch.equal(a, b)
    flips = torch.rand(1000, generator=torch.Generator().manual_seed(0)) < 0.5
    assert 400 < int(flips.sum()) < 600


def test_full_crop_without_flip_is_identity():
    x = torch.rand(4, 3, 16, 16)
    out = random_resized_crop_flip(x, torch.Generator().manual_seed(0), 16, scale=(1.0, 1.0), flip=False)
    # Aspect ratios other than 1 cannot cover the square fully, so compare where the box is whole.
    boxes = crop_boxes(torch.Generator().manual_seed(0), 4, 16, 16, scale=(1.0, 1.0))
    for image, result, box in zip(x, out, boxes):
        if box[2] == 16 and box[3] == 16:
            assert torch.allclose(image, result, atol=1e-5)


def test_list_of_images_of_any_size():
    images = [torch.randint(0, 256, (3, 40 + 7 * i, 50), dtype=torch.uint8) for i in range(3)]
    out = random_resized_crop_flip(images, torch.Generator().manual_seed(0), 24)
    assert out.shape == (3, 3, 24, 24) and 0 <= float(out.min()) and float(out.max()) <= 1


def test_jpeg_roundtrip_is_close_and_returns_bytes():
    y, x = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    img = torch.stack([x, y, (x + y) / 2])[None].repeat(2, 1, 1, 1)
    decoded, encoded = jpeg_roundtrip(img, quality=85)
    assert decoded.dtype == torch.uint8 and decoded.shape == (2, 3, 32, 32)
    assert encoded[0][:2] == b"\xff\xd8"
    assert (decoded.float() / 255 - img).abs().mean() < 0.02
