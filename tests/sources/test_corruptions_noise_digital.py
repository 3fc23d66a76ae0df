"""Noise and digital corruptions: the Corruption contract, the published constants, monotone
severity, and agreement with the reference libraries ImageNet-C uses (PIL, scipy, skimage's HSV
via matplotlib, which defines it the same way)."""

from __future__ import annotations

import io

import matplotlib.colors
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from PIL import Image

from stream_monitor.sources.corruptions import get_corruption
from stream_monitor.sources.corruptions.digital import (
    affine_from_points,
    displace,
    gaussian_blur_matrix,
    hsv_to_rgb,
    rgb_to_hsv,
    warp_affine,
)

NAMES = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
    "brightness", "contrast", "saturate", "pixelate", "jpeg", "elastic",
)
HALF_STEPS = [s / 2 for s in range(11)]  # 0, 0.5, ..., 5


def synthetic(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Gradients with a few flat rectangles: structure for blur-like and colour effects."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images = []
    for _ in range(n):
        a, b = torch.rand(3, 1, 1, generator=g), torch.rand(3, 1, 1, generator=g)
        img = a * xx + b * yy * (1 - a)
        for _ in range(3):
            x0, y0 = (torch.rand(2, generator=g) * size * 0.7).long().tolist()
            w, h = (torch.rand(2, generator=g) * size * 0.5 + 2).long().tolist()
            img[:, y0 : y0 + h, x0 : x0 + w] = torch.rand(3, 1, 1, generator=g)
        images.append(img.clamp(0, 1))
    return torch.stack(images)


@pytest.fixture(scope="module")
def batch32() -> torch.Tensor:
    return synthetic(8, 32)


@pytest.fixture(scope="module")
def batch64() -> torch.Tensor:
    return synthetic(4, 64, seed=1)


def corrupt(name, images, severity, profile="cifar", seed=7):
    return get_corruption(name)(images, severity, torch.Generator().manual_seed(seed), profile)


def mad(name, images, severity, profile="cifar") -> float:
    return float((corrupt(name, images, severity, profile) - images).abs().mean())


def assert_monotone(values, strict: bool, tol: float = 0.0):
    steps = np.diff(values)
    if strict:
        assert (steps > 0).all(), values
    else:
        assert (steps >= -tol).all(), values
    assert values[-1] > values[0], values


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_identity(name, batch32):
    assert corrupt(name, batch32, 0.0) is batch32


@pytest.mark.parametrize("profile", ["cifar", "imagenet", "embedded"])
@pytest.mark.parametrize("name", NAMES)
def test_output_dtype_shape_range(name, profile, batch32):
    for severity in (0.3, 2.5, 5.0):
        out = corrupt(name, batch32, severity, profile)
        assert out.dtype == torch.float32 and out.shape == batch32.shape
        assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output(name, batch32):
    a = corrupt(name, batch32, 3.3, seed=11)
    b = corrupt(name, batch32, 3.3, seed=11)
    assert torch.equal(a, b)
    c = get_corruption(name)
    params = c.sample_params(torch.Generator().manual_seed(11), batch32.shape, 3.3, "cifar")
    assert torch.equal(c.apply(batch32, params), a)


@pytest.mark.parametrize(
    "name", ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "elastic"]
)
def test_different_seed_different_output(name, batch32):
    assert not torch.equal(corrupt(name, batch32, 3, seed=1), corrupt(name, batch32, 3, seed=2))


@pytest.mark.parametrize("name", NAMES)
def test_continuous_severity_interpolates(name):
    c = get_corruption(name)
    for profile in ("cifar", "imagenet", "embedded"):
        table = c.levels[profile]
        assert table.shape[0] == 6 and table.ndim == 2
        np.testing.assert_allclose(c.constants(2.5, profile), (table[2] + table[3]) / 2)
        np.testing.assert_allclose(c.constants(0.25, profile), 0.75 * table[0] + 0.25 * table[1])
        np.testing.assert_allclose(c.constants(4, profile), table[4])


@pytest.mark.parametrize("name", NAMES)
def test_unknown_profile(name, batch32):
    with pytest.raises(ValueError, match="imagenet, cifar, embedded"):
        get_corruption(name).sample_params(torch.Generator(), batch32.shape, 1.0, "tinyimagenet")


# Published constants, rows 1..5 (ImageNet-C make_imagenet_c.py / make_cifar_c.py); row 0 = CCC.
PUBLISHED = {
    "gaussian_noise": ([0.08, 0.12, 0.18, 0.26, 0.38], [0.04, 0.06, 0.08, 0.09, 0.10]),
    "impulse_noise": ([0.03, 0.06, 0.09, 0.17, 0.27], [0.01, 0.02, 0.03, 0.05, 0.07]),
    "speckle_noise": ([0.15, 0.2, 0.35, 0.45, 0.6], [0.06, 0.1, 0.12, 0.16, 0.2]),
    "brightness": ([0.1, 0.2, 0.3, 0.4, 0.5], [0.05, 0.1, 0.15, 0.2, 0.3]),
    "contrast": ([0.4, 0.3, 0.2, 0.1, 0.05], [0.75, 0.5, 0.4, 0.3, 0.15]),
    "pixelate": ([0.6, 0.5, 0.4, 0.3, 0.25], [0.95, 0.9, 0.85, 0.75, 0.65]),
    "jpeg": ([25, 18, 15, 10, 7], [80, 65, 58, 50, 40]),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_scalar_constants(name):
    imagenet, cifar = PUBLISHED[name]
    levels = get_corruption(name).levels
    np.testing.assert_allclose(levels["imagenet"][1:, 0], imagenet)
    np.testing.assert_allclose(levels["cifar"][1:, 0], cifar)


def test_published_shot_saturate_elastic_constants():
    shot = get_corruption("shot_noise").levels  # stored as 1 / photons, as CCC interpolates
    np.testing.assert_allclose(1 / shot["imagenet"][1:, 0], [60, 25, 12, 5, 3])
    np.testing.assert_allclose(1 / shot["cifar"][1:, 0], [500, 250, 100, 75, 50])
    sat = get_corruption("saturate").levels
    np.testing.assert_allclose(sat["imagenet"][1:], [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)])
    np.testing.assert_allclose(sat["cifar"][1:], [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)])
    el = get_corruption("elastic").levels
    np.testing.assert_allclose(el["imagenet"][0], (0, 999, 0, 224))  # CCC's level 0
    np.testing.assert_allclose(el["imagenet"][1, :3], (488, 170.8, 24.4))
    np.testing.assert_allclose(el["imagenet"][5, :3], (244 * 0.12, 244 * 0.01, 244 * 0.02))
    np.testing.assert_allclose(el["cifar"][2, :3], (32 * 0.05, 32 * 0.2, 32 * 0.07))
    assert get_corruption("jpeg").levels["imagenet"][0, 0] == 85  # CCC's level 0


# --------------------------------------------------------------------------- monotone severity

MAD_MONOTONE = [
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "brightness", "contrast", "jpeg",
]


@pytest.mark.parametrize("profile", ["cifar", "imagenet"])
@pytest.mark.parametrize("name", MAD_MONOTONE)
def test_effect_grows_with_severity(name, profile, batch32):
    assert_monotone([mad(name, batch32, s, profile) for s in HALF_STEPS], strict=True)


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "contrast", "jpeg"])
def test_effect_grows_with_severity_64px(name, batch64):
    assert_monotone([mad(name, batch64, s, "imagenet") for s in HALF_STEPS], strict=True)


@pytest.mark.parametrize("profile", ["cifar", "imagenet"])
@pytest.mark.parametrize("size", [32, 64])
def test_pixelate_blockiness_grows(profile, size):
    # Mean difference is not monotone for PIL's box resize (31 of 32 columns is a one-pixel
    # jog, 16 is clean 2x2 blocks); the share of repeated neighbours is, exactly.
    noise = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))

    def repeated(out):
        cols = ((out[..., 1:] - out[..., :-1]).abs() < 1e-6).all(dim=(1, 2)).float().mean()
        rows = ((out[..., 1:, :] - out[..., :-1, :]).abs() < 1e-6).all(dim=(1, 3)).float().mean()
        return float(cols + rows) / 2

    blocky = [repeated(corrupt("pixelate", noise, s, profile)) for s in HALF_STEPS]
    assert_monotone(blocky, strict=False)
    out = corrupt("pixelate", noise, 5, profile)
    factor = get_corruption("pixelate").levels[profile][5, 0]
    assert repeated(out) == pytest.approx((size - int(size * factor)) / (size - 1))


@pytest.mark.parametrize("profile", ["cifar", "imagenet"])
def test_saturate_grows_on_each_arm(profile, batch32):
    # ImageNet-C's saturate desaturates at levels 1-2 and saturates at 3-5, so the factor crosses
    # 1 between levels 2 and 3; the effect grows along each arm.
    desaturate = [mad("saturate", batch32, s, profile) for s in (0, 0.5, 1, 1.5, 2)]
    saturate = [mad("saturate", batch32, s, profile) for s in (3, 3.5, 4, 4.5, 5)]
    assert_monotone(desaturate, strict=True)
    assert_monotone(saturate, strict=False, tol=1e-4)  # levels 4.5-5 mostly clip S at 1
    low = corrupt("saturate", batch32, 2, profile)
    high = corrupt("saturate", batch32, 5, profile)
    sat = [float(rgb_to_hsv(x)[:, 1].mean()) for x in (low, batch32, high)]
    assert sat[0] < sat[1] < sat[2]


@pytest.mark.parametrize("profile", ["cifar", "imagenet"])
@pytest.mark.parametrize("size", [32, 64])
def test_elastic_local_strain_grows_from_level_3(profile, size):
    # ImageNet-C's elastic table is not monotone in one measure: levels 1-2 are large affine
    # jitters with a smooth field, levels 3-5 small jitters with a rough field. From level 3 on,
    # the local strain (gradient of the displacement field) grows in both tables.
    el = get_corruption("elastic")
    shape = (4, 3, size, size)
    strain = []
    for s in (3, 3.5, 4, 4.5, 5):
        params = el.sample_params(torch.Generator().manual_seed(3), shape, s, profile)
        _, field = el.transforms(shape, params.constants, params.draws)
        strain.append(float(field.diff(dim=-1).abs().mean() + field.diff(dim=-2).abs().mean()))
    assert_monotone(strain, strict=True)


def test_elastic_changes_the_image_at_every_severity(batch32):
    for profile in ("cifar", "imagenet"):
        assert all(mad("elastic", batch32, s, profile) > 1e-3 for s in HALF_STEPS[1:])


# Stronger constants than CIFAR's, as the embedded table may get: every corruption still works
# and hits harder than the CIFAR level 5.
STRONGER = {
    "gaussian_noise": [0.5], "shot_noise": [1.0], "impulse_noise": [0.5], "speckle_noise": [1.0],
    "brightness": [0.8], "contrast": [0.01], "saturate": [0.0, 0.0], "pixelate": [0.1], "jpeg": [2],
    "elastic": [32 * 0.3, 32 * 0.03, 32 * 0.1, 32],
}


@pytest.mark.parametrize("name", NAMES)
def test_stronger_embedded_constants_extrapolate(name, batch32, monkeypatch):
    levels = dict(get_corruption(name).levels)
    table = levels["cifar"].copy()
    table[5] = STRONGER[name]
    levels["embedded"] = table
    monkeypatch.setattr(type(get_corruption(name)), "levels", levels)
    out = corrupt(name, batch32, 5, "embedded")
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    assert mad(name, batch32, 5, "embedded") > mad(name, batch32, 5, "cifar")


def test_elastic_grows_with_alpha_at_fixed_sigma(batch64, monkeypatch):
    el = get_corruption("elastic")
    levels = dict(el.levels)
    levels["embedded"] = np.array([(a, 1.5, 0.0, 32) for a in (0, 1, 2, 4, 8, 16)], dtype=float)
    monkeypatch.setattr(type(el), "levels", levels)
    assert_monotone([mad("elastic", batch64, s, "embedded") for s in HALF_STEPS], strict=True)


# --------------------------------------------------------------------------- semantics


def test_noise_statistics():
    flat = torch.full((4, 3, 64, 64), 0.5)
    out = corrupt("gaussian_noise", flat, 1, "imagenet")  # sigma 0.08, rarely clipped
    assert float(out.std()) == pytest.approx(0.08, rel=0.03)
    out = corrupt("speckle_noise", flat, 1, "imagenet")  # 0.5 * N(0, 0.15^2)
    assert float(out.std()) == pytest.approx(0.5 * 0.15, rel=0.03)
    out = corrupt("shot_noise", flat, 1, "cifar")  # Poisson(0.5 * 500) / 500
    assert float(out.mean()) == pytest.approx(0.5, abs=2e-3)
    assert float(out.var()) == pytest.approx(0.5 / 500, rel=0.05)
    assert torch.allclose(out * 500, (out * 500).round(), atol=1e-3)  # counts / photons
    out = corrupt("impulse_noise", flat, 5, "imagenet")  # 27% replaced, half salt
    assert float((out == 1).float().mean()) == pytest.approx(0.135, abs=0.01)
    assert float((out == 0).float().mean()) == pytest.approx(0.135, abs=0.01)


def test_shot_noise_is_poisson_in_photon_units():
    photons = 50.0  # CIFAR-10-C level 5
    x = torch.full((4, 3, 64, 64), 0.4)
    out = corrupt("shot_noise", x, 5, "cifar") * photons
    # Poisson(0.4 * 50): integer counts with mean and variance 20 (clipping at 1 is negligible).
    assert float((out - out.round()).abs().max()) < 1e-3
    assert abs(float(out.mean()) - 20.0) < 0.3 and abs(float(out.var()) - 20.0) < 1.5


def test_contrast_keeps_channel_means(batch32):
    out = corrupt("contrast", batch32, 3, "imagenet")
    torch.testing.assert_close(out.mean(dim=(2, 3)), batch32.mean(dim=(2, 3)), atol=1e-5, rtol=0)


def test_hsv_matches_skimage_definition(batch32):
    # matplotlib's rgb_to_hsv/hsv_to_rgb follow skimage's (tie order, grey hue 0).
    ties = (torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 4).round() / 4
    for rgb in (batch32, ties):
        ref = matplotlib.colors.rgb_to_hsv(rgb.permute(0, 2, 3, 1).numpy())
        np.testing.assert_allclose(rgb_to_hsv(rgb).permute(0, 2, 3, 1).numpy(), ref, atol=1e-6)
        torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-5, rtol=0)
    hsv = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = matplotlib.colors.hsv_to_rgb(hsv.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(hsv_to_rgb(hsv).permute(0, 2, 3, 1).numpy(), ref, atol=1e-6)


@pytest.mark.parametrize("name, channel, op", [("brightness", 2, "add"), ("saturate", 1, "affine")])
def test_hsv_corruptions_match_reference(name, channel, op, batch32):
    c = get_corruption(name).constants(4.0, "imagenet")
    hsv = matplotlib.colors.rgb_to_hsv(batch32.permute(0, 2, 3, 1).numpy().astype(np.float64))
    if op == "add":
        hsv[..., channel] = np.clip(hsv[..., channel] + c[0], 0, 1)
    else:
        hsv[..., channel] = np.clip(hsv[..., channel] * c[0] + c[1], 0, 1)
    ref = np.clip(matplotlib.colors.hsv_to_rgb(hsv), 0, 1)
    out = corrupt(name, batch32, 4.0, "imagenet").permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def from_pil(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.float32) / 255


@pytest.mark.parametrize(
    "size, severity, profile", [(32, 5, "cifar"), (32, 3, "imagenet"), (45, 2.5, "imagenet")]
)
def test_pixelate_matches_pil_box(size, severity, profile):
    img = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    img = (img * 255).round() / 255  # PIL sees exactly these values
    out = corrupt("pixelate", img, severity, profile)
    small = int(size * get_corruption("pixelate").constants(severity, profile)[0] + 1e-6)
    for i in range(2):
        ref = to_pil(img[i]).resize((small, small), Image.BOX).resize((size, size), Image.BOX)
        # PIL rounds to uint8 after each pass.
        np.testing.assert_allclose(out[i].permute(1, 2, 0).numpy(), from_pil(ref), atol=1.01 / 255)


@pytest.mark.parametrize("severity, quality", [(1, 80), (4.5, 45)])
def test_jpeg_matches_pil(severity, quality, batch32):
    out = corrupt("jpeg", batch32, severity, "cifar")
    for i in range(len(batch32)):
        buffer = io.BytesIO()
        to_pil(batch32[i]).save(buffer, "JPEG", quality=quality)
        ref = from_pil(Image.open(buffer))
        assert np.abs(out[i].permute(1, 2, 0).numpy() - ref).max() <= 2 / 255


def test_jpeg_quality_is_rounded_half_to_even():
    jpeg = get_corruption("jpeg")
    assert jpeg.constants(1.5, "imagenet")[0] == 21.5  # round() -> 22, as CCC
    assert jpeg.constants(2.5, "imagenet")[0] == 16.5  # round() -> 16
    x = synthetic(2, 32)
    q16 = jpeg.apply(x, jpeg.sample_params(torch.Generator(), x.shape, 2.5, "imagenet"))
    buffer = io.BytesIO()
    to_pil(x[0]).save(buffer, "JPEG", quality=16)
    assert np.abs(q16[0].permute(1, 2, 0).numpy() - from_pil(Image.open(buffer))).max() <= 2 / 255


@pytest.mark.parametrize("size, sigma", [(32, 0.0), (32, 0.7), (32, 6.4), (64, 20.0), (40, 999.0)])
def test_gaussian_blur_matrix_matches_scipy(size, sigma):
    field = np.random.default_rng(0).uniform(-1, 1, (size, size))
    blur = gaussian_blur_matrix(size, sigma).double().numpy()
    ref = ndi.gaussian_filter(field, sigma, mode="reflect", truncate=3)
    np.testing.assert_allclose(blur @ field @ blur.T, ref, atol=1e-6)


def test_elastic_matches_reference_pipeline():
    """End to end at the reference size: cv2.warpAffine (REFLECT_101, here scipy's 'mirror'),
    skimage gaussian (scipy 'reflect', truncate 3), map_coordinates(order 1, 'reflect')."""
    el = get_corruption("elastic")
    img = synthetic(2, 32, seed=5)
    params = el.sample_params(torch.Generator().manual_seed(4), img.shape, 3.0, "cifar")
    out = el.apply(img, params).numpy()
    alpha, sigma, jitter, _ = params.constants
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    pts = np.array([[26, 26], [26, 6], [6, 6]], dtype=np.float64)  # centre 16 +- 32 // 3
    for i in range(2):
        moved = pts + jitter * params.draws["affine"][i].double().numpy()
        forward = affine_from_points(torch.from_numpy(pts), torch.from_numpy(moved)[None])[0]
        inv = np.linalg.inv(forward.numpy())
        matrix, offset = inv[:2, :2][::-1, ::-1], inv[:2, 2][::-1]  # (x, y) -> (row, col)
        field = params.draws["field"][i].double().numpy()
        dx = ndi.gaussian_filter(field[0], sigma, mode="reflect", truncate=3) * alpha
        dy = ndi.gaussian_filter(field[1], sigma, mode="reflect", truncate=3) * alpha
        for ch in range(3):
            plane = img[i, ch].double().numpy()
            warped = ndi.affine_transform(plane, matrix, offset=offset, order=1, mode="mirror")
            ref = ndi.map_coordinates(warped, [rows + dy, cols + dx], order=1, mode="reflect")
            np.testing.assert_allclose(out[i, ch], np.clip(ref, 0, 1), atol=1e-4)


def test_warp_and_displace_handle_non_square():
    img = torch.rand(1, 3, 20, 30, generator=torch.Generator().manual_seed(0))
    identity = torch.eye(3, dtype=torch.float64)[None]
    torch.testing.assert_close(warp_affine(img, identity), img, atol=1e-5, rtol=0)
    torch.testing.assert_close(displace(img, torch.zeros(1, 2, 20, 30)), img, atol=1e-5, rtol=0)
    shift = torch.zeros(1, 2, 20, 30)
    shift[:, 0] = 1.0  # sample one column to the right
    torch.testing.assert_close(displace(img, shift)[..., :-1], img[..., 1:], atol=1e-5, rtol=0)


def test_elastic_scales_with_image_size():
    # The displacement field, as a fraction of the image, is about the same at 32 and 128 px.
    el = get_corruption("elastic")
    rms = []
    for size in (32, 128):
        shape = (4, 3, size, size)
        params = el.sample_params(torch.Generator().manual_seed(0), shape, 4.0, "cifar")
        _, field = el.transforms(shape, params.constants, params.draws)
        rms.append(float(field.pow(2).mean().sqrt()) / size)
    assert rms[1] == pytest.approx(rms[0], rel=0.25)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name, batch32):
    c = get_corruption(name)
    params = c.sample_params(torch.Generator().manual_seed(0), batch32.shape, 3.5, "cifar")
    cpu = c.apply(batch32, params)
    gpu = c.apply(batch32.cuda(), params)
    assert gpu.device.type == "cuda"
    # JPEG runs on the CPU codec either way; the rest are float ops (and exact Poisson counts).
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-5, rtol=0)
