"""Tests of probelib.corruptions: generator (shape, monotonicity, determinism, differential
checks against plain per-image formulas), the -C readers on files in the real layouts, the
writer/CLI and the embedded mnist5k-c (notebooks 20 and 21: tests/test_notebooks.py)."""

from __future__ import annotations

import colorsys
import io
import json
import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from probelib import corruptions as C
from probelib.corruptions import CORRUPTIONS, DETERMINISTIC, corrupt, load_corrupted
from probelib.corruptions import _kernels as K
from probelib.corruptions import blur, digital, noise, streams, weather

RANDOM = [c for c in CORRUPTIONS if c not in DETERMINISTIC]


def natural_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Natural RGB images: random 96-px crops of scikit-image's photos, area-downscaled to size."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        crop = int(rng.integers(max(size, 64), max(size, 64) + 96))
        top, left = rng.integers(0, p.shape[0] - crop), rng.integers(0, p.shape[1] - crop)
        im = p[top:top + crop, left:left + crop]
        out.append(cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(out)


# --------------------------------------------------------------------------- plain references
# Per-formula versions of the generator's fast paths; the tests check both give the same values.
def _zoom_hwk(x: np.ndarray, z: float) -> np.ndarray:
    """``clipped_zoom`` of H×W×K stacks (images and channels on the last axis)."""
    r0, r1, fr = K._zoom_taps(x.shape[0], z)
    y = x[r0] * (1 - fr)[:, None, None] + x[r1] * fr[:, None, None]
    c0, c1, fc = K._zoom_taps(x.shape[1], z)
    return y[:, c0] * (1 - fc)[None, :, None] + y[:, c1] * fc[None, :, None]


def _to_hwk(x: np.ndarray) -> np.ndarray:
    n, h, w, c = x.shape
    return np.ascontiguousarray(x.transpose(1, 2, 0, 3)).reshape(h, w, n * c)


def _from_hwk(y: np.ndarray, n: int) -> np.ndarray:
    h, w, _ = y.shape
    return y.reshape(h, w, n, -1).transpose(2, 0, 1, 3)


def _clipped_zoom(x: np.ndarray, z: float) -> np.ndarray:
    """``clipped_zoom`` of the originals on a batch N×H×W×C, per axis (works for non-square)."""
    if z == 1:
        return x.astype(np.float64, copy=True)
    return _from_hwk(_zoom_hwk(_to_hwk(x.astype(np.float64)), z), x.shape[0])


def _rgb_to_hsv(x: np.ndarray) -> np.ndarray:
    """RGB [0, 1] → HSV, all in [0, 1] (skimage's definition), float64, any leading shape."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = np.maximum(np.maximum(r, g), b)
    delta = v - np.minimum(np.minimum(r, g), b)
    safe = np.where(delta == 0, 1.0, delta)
    hue = np.where(b == v, 4.0 + (r - g) / safe,
                   np.where(g == v, 2.0 + (b - r) / safe, (g - b) / safe))
    hue = np.where(delta == 0, 0.0, (hue / 6.0) % 1.0)
    sat = np.where(v == 0, 0.0, delta / np.where(v == 0, 1.0, v))
    return np.stack([hue, sat, v], axis=-1)


# per sector 0..5 of the hue: which of (v, q, p, t) is R, G, B
_HSV_PICK = np.array([[0, 1, 2, 2, 3, 0], [3, 0, 0, 1, 2, 2], [2, 2, 3, 0, 0, 1]])


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """HSV [0, 1] → RGB [0, 1] (inverse of :func:`_rgb_to_hsv`)."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = np.floor(h * 6)
    f = h * 6 - sector
    sector = sector.astype(np.int64) % 6
    cands = np.stack([v, v * (1 - f * s), v * (1 - s), v * (1 - (1 - f) * s)])   # v, q, p, t
    pick = _HSV_PICK[:, sector]                                                  # 3 × ...
    return np.moveaxis(np.take_along_axis(cands, pick, axis=0), 0, -1)


def _hsv_apply(x: np.ndarray, fn: Callable[[np.ndarray], None]) -> np.ndarray:
    """RGB [0, 1] → HSV, ``fn`` edits it in place, → RGB, clipped and scaled to [0, 255].

    The plain reference of ``digital._hsv_edit`` (which brightness and saturate use)."""
    hsv = _rgb_to_hsv(x)
    fn(hsv)
    return np.clip(_hsv_to_rgb(hsv), 0, 1) * 255


def mean_change(x, c, s, seed=0):
    return float(np.abs(corrupt(x, c, s, seed).astype(float) - x).mean())


# --------------------------------------------------------------------------- names / errors
def test_names_groups():
    assert len(C.corruption_names()) == 15 and len(C.corruption_names(extra=True)) == 19
    assert C.corruption_names(extra=True)[15:] == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert [C.corruption_group(c) for c in ("shot_noise", "zoom_blur", "fog", "pixelate")] == \
        ["noise", "blur", "weather", "digital"]
    assert sum(len(v) for v in C.GROUPS.values()) == 19 and len(DETERMINISTIC) == 8
    assert [C.REGISTRY[c].index for c in CORRUPTIONS] == list(range(19))
    assert C.REGISTRY["spatter"].family == "weather" and C.corruption_group("spatter") == "extra"
    assert len(C.MONOTONE) == 13 and set(C.MONOTONE) <= set(CORRUPTIONS)


# Recorded outputs (tests/corruption_outputs.npz, written by tests/make_corruption_fixture.py).
# Not bit-equality: resampling, blur kernels and colour conversions in OpenCV / scipy / numpy may
# round differently in the last bit on another CPU (SIMD paths) or library build, which moves a
# uint8 pixel by one grey level now and then. A real change of the generator moves many pixels or
# by more. So: shapes and dtypes exactly, and each output may differ from the recorded one by at
# most 1 grey level on at most 0.1 % of its pixels. JPEG is compared always (not skipped on another
# OpenCV version) but looser, ≤ 2 levels on ≤ 1 % of the pixels: libjpeg / libjpeg-turbo builds
# differ in their (SIMD) DCT and colour conversion, whose rounding moves more pixels than a blur's.
RECORDED_TOLERANCE = (1, 0.001)                         # (max |Δ| in grey levels, max share of pixels off)
RECORDED_TOLERANCE_JPEG = (2, 0.01)


def assert_close_to_recorded(got: np.ndarray, want: np.ndarray, max_diff: int, max_share: float,
                             what: str) -> None:
    """``got`` equals ``want`` in shape and dtype, and differs by ≤ ``max_diff`` grey levels on
    ≤ ``max_share`` of the values (pixels × channels)."""
    assert got.shape == want.shape and got.dtype == want.dtype, \
        f"{what}: {got.dtype}{got.shape}, recorded {want.dtype}{want.shape}"
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    share = float((diff > 0).mean())
    assert diff.max() <= max_diff and share <= max_share, (
        f"{what}: differs from the recorded output by up to {diff.max()} grey levels on {share:.3%} of the "
        f"values (allowed: ≤ {max_diff} on ≤ {max_share:.1%}). If the generator changed on purpose, bump "
        "GENERATOR_VERSION and rerun `python tests/make_corruption_fixture.py --force`.")


def test_recorded_tolerance_helper():
    """The helper lets a last-bit rounding difference through and stops a real change."""
    want = np.full((2, 40, 40, 3), 100, np.uint8)
    got = want.copy()
    got.reshape(-1)[::2000] += 1                                        # 5 of 9600 values (0.05 %), by 1
    assert_close_to_recorded(got, want, *RECORDED_TOLERANCE, what="rounding")
    for bad in (want + 2 * (np.arange(want.size).reshape(want.shape) % 2000 == 0),   # by 2
                np.where(np.arange(want.size).reshape(want.shape) % 500 == 0, want + 1, want)):  # 0.2 %
        with pytest.raises(AssertionError, match="GENERATOR_VERSION"):
            assert_close_to_recorded(bad.astype(np.uint8), want, *RECORDED_TOLERANCE, what="change")
    with pytest.raises(AssertionError, match="recorded uint8"):
        assert_close_to_recorded(want.astype(np.int16), want, *RECORDED_TOLERANCE, what="dtype")


def test_outputs_match_the_recorded_generator():
    """Every corruption × severity on grey, CIFAR-, Tiny-ImageNet- and ImageNet-sized inputs gives the
    outputs recorded in tests/corruption_outputs.npz, within RECORDED_TOLERANCE (see above)."""
    from make_corruption_fixture import FIRST_INDEX, FIXTURE, SEED   # tests/ is on sys.path under pytest

    with np.load(FIXTURE) as f:
        record = {k: f[k] for k in f.files}
    names = {k.split("/")[2] for k in record if k.startswith("out/")}
    assert names == set(CORRUPTIONS), "the fixture lacks corruptions: rerun tests/make_corruption_fixture.py --force"
    inputs = {k[3:]: v for k, v in record.items() if k.startswith("in/")}   # stored: no dependence on numpy's streams
    assert sorted(inputs) == ["cifar_grey", "cifar_rgb", "in_rgb", "tin_rgb"]
    for key, x in inputs.items():
        for c in CORRUPTIONS:
            tol = RECORDED_TOLERANCE_JPEG if c == "jpeg_compression" else RECORDED_TOLERANCE
            for s in range(1, 6):
                y = corrupt(x, c, s, seed=SEED, first_index=FIRST_INDEX)
                assert_close_to_recorded(y, record[f"out/{key}/{c}/{s}"], *tol,
                                         what=f"{key}/{c}/{s} (recorded with OpenCV {record['opencv']})")


def test_bad_inputs():
    x = natural_images(2, 16)
    with pytest.raises(ValueError, match="gaussian_noise.*Valid corruption names:.*zoom_blur"):
        corrupt(x, "gausian_noise", 1)
    for s in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match="severity must be an integer in 1..5"):
            corrupt(x, "fog", s)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(x / 255.0, "fog", 1)
    with pytest.raises(ValueError, match="N×H×W×C"):
        corrupt(np.zeros((2, 8, 8, 4), np.uint8), "fog", 1)
    with pytest.raises(ValueError, match="seed"):
        corrupt(x, "fog", 1, seed=-1)


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("size", [8, 28, 32, 64])
def test_shape_dtype_every_setting(size):
    x = natural_images(3, size, seed=size)
    for c in CORRUPTIONS:
        for s in range(1, 6):
            y = corrupt(x, c, s)
            assert y.shape == x.shape and y.dtype == np.uint8, (c, s)
    grey = x[..., :1]
    for c in CORRUPTIONS:
        assert corrupt(grey, c, 3).shape == grey.shape
        assert corrupt(grey[..., 0], c, 3).shape == grey.shape[:3]


def test_non_square_and_224_smoke():
    x = natural_images(2, 40)[:, :, :30]
    for c in CORRUPTIONS:
        assert corrupt(x, c, 5).shape == x.shape
    big = natural_images(1, 224)
    for c in ("glass_blur", "frost", "fog", "elastic_transform", "motion_blur"):
        assert corrupt(big, c, 5).shape == big.shape


def test_grey_is_luma_of_rgb():
    g = natural_images(4, 28)[..., :1]
    rgb = np.repeat(g, 3, axis=-1)
    for c in ("gaussian_noise", "snow", "frost", "fog", "saturate", "spatter"):
        expect = cv2.cvtColor(corrupt(rgb, c, 4).reshape(-1, 28, 3), cv2.COLOR_RGB2GRAY)
        np.testing.assert_array_equal(corrupt(g, c, 4)[..., 0].reshape(-1, 28), expect)


# --------------------------------------------------------------------------- monotone (spec §5)
STRICT = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur",
          "gaussian_blur", "zoom_blur", "snow", "fog", "brightness", "contrast", "pixelate",
          "jpeg_compression"]


@pytest.mark.parametrize("size", [32, 64])
def test_monotone_in_severity(size):
    x = natural_images(32, size, seed=1)
    for c in STRICT + ["motion_blur"]:
        d = [mean_change(x, c, s) for s in range(1, 6)]
        if c == "motion_blur":
            assert all(b >= a * 0.97 for a, b in zip(d, d[1:])), (c, d)
            assert d[-1] > d[0]
        else:
            assert all(b > a for a, b in zip(d, d[1:])), (c, d)


# --------------------------------------------------------------------------- determinism
def test_determinism_seed_and_batching():
    x = natural_images(6, 32, seed=2)
    for c in CORRUPTIONS:
        a = corrupt(x, c, 3, seed=5)
        np.testing.assert_array_equal(a, corrupt(x, c, 3, seed=5))
        split = np.concatenate([corrupt(x[:2], c, 3, seed=5), corrupt(x[2:], c, 3, seed=5, first_index=2)])
        np.testing.assert_array_equal(a, split, err_msg=c)
        other = corrupt(x, c, 3, seed=6)
        if c in DETERMINISTIC:
            np.testing.assert_array_equal(a, other, err_msg=c)
        else:
            assert all((a[i] != other[i]).any() for i in range(len(x))), c
    # one image alone equals its row in a batch
    np.testing.assert_array_equal(corrupt(x[3:4], "glass_blur", 5, first_index=3),
                                  corrupt(x, "glass_blur", 5)[3:4])


# --------------------------------------------------------------------------- differential
def test_contrast_brightness_saturate_vs_plain_formulas():
    x = natural_images(3, 12, seed=3)
    for s in range(1, 6):
        c = C.PARAMS["contrast"]["cifar"][s - 1]
        xf = x / 255.0
        means = xf.reshape(3, -1, 3).mean(1)[:, None, None]
        ref = np.uint8(np.clip((xf - means) * c + means, 0, 1) * 255)
        assert np.abs(corrupt(x, "contrast", s).astype(int) - ref).max() <= 1
        for name in ("brightness", "saturate"):
            p = C.PARAMS[name]["cifar"][s - 1]
            ref = np.empty_like(x)
            for idx in np.ndindex(x.shape[:3]):
                h, sat, v = colorsys.rgb_to_hsv(*(x[idx] / 255.0))
                if name == "brightness":
                    v = min(max(v + p, 0), 1)
                else:
                    sat = min(max(sat * p[0] + p[1], 0), 1)
                ref[idx] = [int(min(max(t, 0), 1) * 255) for t in colorsys.hsv_to_rgb(h, sat, v)]
            assert np.abs(corrupt(x, name, s).astype(int) - ref).max() <= 1, (name, s)


def _box_matrix(n_in: int, n_out: int) -> np.ndarray:
    """PIL's BOX resampling written out: output o averages the input pixels whose centres lie in
    the box of width max(scale, 1) (in output-pixel units 1) centred at (o + ½)·scale."""
    scale = n_in / n_out
    width = max(scale, 1.0)
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        for i in range(n_in):
            t = ((i + 0.5) - (o + 0.5) * scale) / width
            m[o, i] = 1.0 if -0.5 < t <= 0.5 else 0.0
    return m / m.sum(1, keepdims=True)


def test_pixelate_vs_box_filter():
    x = natural_images(3, 32, seed=4)
    sizes = [int(32 * f) for f in C.PARAMS["pixelate"]["cifar"]]
    assert sizes == [30, 28, 27, 24, 20]
    for s, k in enumerate(sizes, 1):
        down, up = _box_matrix(32, k), _box_matrix(k, 32)
        small = np.clip(np.rint(np.einsum("ah,nhwc,bw->nabc", down, x.astype(float), down)), 0, 255)
        ref = np.clip(np.rint(np.einsum("ah,nhwc,bw->nabc", up, small, up)), 0, 255)
        assert np.abs(corrupt(x, "pixelate", s).astype(int) - ref).max() <= 1, s


def test_jpeg_vs_opencv_codec():
    x = natural_images(3, 32, seed=5)
    for s, q in enumerate(C.PARAMS["jpeg_compression"]["cifar"], 1):
        ref = np.stack([cv2.imdecode(cv2.imencode(".jpg", im[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])[1],
                                     cv2.IMREAD_COLOR)[..., ::-1] for im in x])
        diff = np.abs(corrupt(x, "jpeg_compression", s).astype(int) - ref)
        assert diff.max() <= 1 and diff.mean() < 0.05, (s, diff.max(), diff.mean())


def test_defocus_vs_direct_correlation():
    def gauss3(sigma):
        g = np.exp(-np.arange(-1, 2) ** 2 / (2 * sigma ** 2))
        return g / g.sum()

    for size, pset in ((32, "cifar"), (64, "tin")):
        x = natural_images(2, size, seed=6)
        for s in range(1, 6):
            r, alias = C.PARAMS["defocus_blur"][pset][s - 1]
            grid = np.arange(-8, 9)
            disk = ((grid[:, None] ** 2 + grid[None] ** 2) <= r ** 2).astype(float)
            disk /= disk.sum()
            g = gauss3(alias)
            pad = np.pad(disk, 1)          # the disk is far from the 17×17 border: zero border is exact
            kernel = sum(g[i] * g[j] * pad[i:i + 17, j:j + 17] for i in range(3) for j in range(3))
            xp = np.pad(x / 255.0, ((0, 0), (8, 8), (8, 8), (0, 0)), mode="reflect")  # reflect-101
            out = sum(kernel[i, j] * xp[:, i:i + size, j:j + size] for i in range(17) for j in range(17))
            ref = np.uint8(np.clip(out, 0, 1) * 255)
            assert np.abs(corrupt(x, "defocus_blur", s).astype(int) - ref).max() <= 1, (size, s)


def test_glass_blur_matches_sequential_loop():
    """The pointer-jumping gather equals the originals' sequential loop for δ = 1..4."""
    rng = np.random.default_rng(0)
    for h, w, delta in [(12, 12, 1), (12, 12, 2), (10, 13, 3), (16, 11, 4)]:
        img = rng.integers(0, 256, (3, h, w, 3)).astype(np.uint8)
        npos = (h - 2 * delta) * (w - 2 * delta)
        d = rng.integers(-delta, delta, size=(3, npos, 2))
        src = blur._glass_sources(h, w, delta, d)
        fast = np.take_along_axis(img.reshape(3, h * w, 3), src[:, :, None], axis=1).reshape(img.shape)
        for b in range(3):
            ref, k = img[b].copy(), 0
            for hh in range(h - delta, delta, -1):
                for ww in range(w - delta, delta, -1):
                    dx, dy = d[b, k]
                    k += 1
                    ref[hh, ww], ref[hh + dy, ww + dx] = ref[hh + dy, ww + dx], ref[hh, ww]
            np.testing.assert_array_equal(fast[b], ref)


def test_image_streams_equal_default_rng():
    """The batch-seeded per-image generators are default_rng([seed, corruption, severity, index])."""
    for seed, first in ((0, 0), (7, 2 ** 32 - 3), (2 ** 40, 5)):
        for k, g in enumerate(streams._ImageStreams(seed, 4, 3, first, 5)):
            np.testing.assert_array_equal(g.random(4), np.random.default_rng([seed, 4, 3, first + k]).random(4))


def test_shot_noise_is_the_poisson_level_distribution():
    """Shot noise samples the output level by the exact CDF of ⌊clip(Poisson(λ)/c)·255⌋."""
    from scipy import stats

    c = C.PARAMS["shot_noise"]["cifar"][4]
    cdf = noise._shot_tables(c)[0].reshape(256, 256)
    k = np.arange(4 * c)
    level = (np.clip(k / c, 0, 1) * 255).astype(np.uint8)
    for v in (0, 1, 77, 200, 255):
        pmf = stats.poisson.pmf(k, v / 255.0 * c)
        np.testing.assert_allclose(cdf[v, :255], [pmf[level <= j].sum() for j in range(255)], atol=1e-12)
    x = natural_images(4, 16, seed=9)
    y = corrupt(x, "shot_noise", 5, seed=3)
    for i in range(4):                   # the inverse CDF at the image's own uniforms
        u = np.random.default_rng([3, CORRUPTIONS.index("shot_noise"), 5, i]).random(x.shape[1:])
        np.testing.assert_array_equal(y[i], (cdf[x[i]] <= u[..., None]).sum(-1))


def test_hsv_fast_path_equals_reference_formulas():
    """Brightness/saturate's blocked HSV round trip gives the reference formulas' bytes, ties included."""
    rng = np.random.default_rng(0)
    a, b = np.meshgrid(np.arange(0, 256, 5), np.arange(0, 256, 5))
    a, b = a.ravel(), b.ravel()
    ties = np.concatenate([np.stack(t, -1) for t in ((a, a, b), (a, b, a), (b, a, a), (a, a, a))])
    rgb = np.concatenate([ties, rng.integers(0, 256, (30000, 3))]).astype(np.uint8)[None, :, None]
    for delta in (0.05, 0.2, 0.5):
        def f(hsv):
            hsv[..., 2] = np.clip(hsv[..., 2] + delta, 0, 1)
        np.testing.assert_array_equal(digital._hsv_edit(rgb, brightness=delta), np.uint8(_hsv_apply(rgb / 255.0, f)))
    for mul, add in ((0.1, 0), (2.5, 0.2), (30, 0.2)):
        def f(hsv):
            hsv[..., 1] = np.clip(hsv[..., 1] * mul + add, 0, 1)
        np.testing.assert_array_equal(digital._hsv_edit(rgb, saturation=(mul, add)), np.uint8(_hsv_apply(rgb / 255.0, f)))


def test_motion_blur_equals_float64_tap_sum():
    """Motion blur's float32 sum with exact fix-up near level edges equals the float64 sum in tap order
    (these images have pixels, at each radius, where the float32 sum alone quantises differently)."""
    x = natural_images(64, 32, seed=4)
    x[0] = 200
    x[1, 5:9] = 3
    angles = np.random.default_rng(4).uniform(-45, 45, 64)
    angles[:4] = [-45, 45, 0, 44.9999]
    for radius, sigma in ((6, 1), (9, 2.5), (14, 12)):
        weights, dy, dx = K._motion_taps(radius, sigma, angles)
        pad = int(np.abs(np.concatenate([dy, dx])).max())
        ref = []
        for im, oy, ox in zip(x, dy, dx):
            p = np.pad(im, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
            acc = np.zeros(im.shape)
            for wk, a, b in zip(weights, oy, ox):
                acc += wk * p[pad + a:pad + a + 32, pad + b:pad + b + 32]
            ref.append(np.floor(np.rint(257.0 * acc) / 257.0).clip(0, 255).astype(np.uint8))
        np.testing.assert_array_equal(K._motion_blur(x, radius, sigma, angles), np.stack(ref))


# --------------------------------------------------------------------------- unit checks (spec §5)
def test_zoom_factor_counts():
    counts = [len(C.zoom_factors(*p)) for p in C.PARAMS["zoom_blur"]["cifar"]]
    assert counts == [7, 12, 16, 21, 26]
    assert [len(C.zoom_factors(*p)) for p in C.PARAMS["zoom_blur"]["in"]] == [12, 16, 11, 13, 11]


def test_zoom_matches_scipy_zoom():
    from scipy.ndimage import zoom

    x = np.random.default_rng(0).random((2, 20, 17, 3))
    for z in (1.06, 1.75, 2.25):
        ref = []
        for im in x:
            ch, cw = math.ceil(20 / z), math.ceil(17 / z)
            t, l = (20 - ch) // 2, (17 - cw) // 2
            zz = zoom(im[t:t + ch, l:l + cw], (z, z, 1), order=1)
            tt, tl = (zz.shape[0] - 20) // 2, (zz.shape[1] - 17) // 2
            ref.append(zz[tt:tt + 20, tl:tl + 17])
        np.testing.assert_allclose(_clipped_zoom(x, z), np.stack(ref), atol=1e-12)


def test_motion_blur_kernel_formula():
    img = np.zeros((1, 9, 40, 1), np.uint8)
    img[0, 4, 30] = 255
    radius, sigma = 6, 2.0
    out = K._motion_blur(img, radius, sigma, np.array([0.0]))[0, 4, :, 0]
    i = np.arange(2 * math.ceil(radius) + 1)
    w = np.exp(-i ** 2 / (2 * sigma ** 2))
    w /= w.sum()
    expect = np.zeros(40)
    expect[30 - i] = np.floor(np.rint(257 * 255 * w) / 257)
    np.testing.assert_array_equal(out, expect)
    # 90°: taps go down the rows (row index grows downward)
    img2 = np.zeros((1, 40, 9, 1), np.uint8)
    img2[0, 30, 4] = 255
    col = K._motion_blur(img2, radius, sigma, np.array([90.0]))[0, :, 4, 0]
    np.testing.assert_array_equal(col, expect)


def test_plasma_and_noise_statistics():
    u = np.random.default_rng(0).random((4, weather._plasma_draw_count(32)))
    maps = C.plasma_fractal(u, 32, 2.0)
    assert maps.shape == (4, 32, 32) and maps.min() == 0 and np.allclose(maps.max(axis=(1, 2)), 1)
    x = np.full((64, 32, 32, 3), 128, np.uint8)
    for s, amount in enumerate(C.PARAMS["impulse_noise"]["cifar"], 1):
        share = np.isin(corrupt(x, "impulse_noise", s), (0, 255)).mean()
        assert abs(share - amount) < 0.2 * amount + 0.002
    for s, sigma in enumerate(C.PARAMS["gaussian_noise"]["cifar"], 1):
        d = corrupt(x, "gaussian_noise", s).astype(float) - 128
        assert abs(d.std() / (255 * sigma) - 1) < 0.03


def test_frost_textures_checked_and_five():
    tex = C.frost_textures(0.2)
    assert len(tex) == 5 and min(min(t.shape[:2]) for t in tex) == 63
    assert C.FROST_FILES["frost1.png"].startswith("aae1c580")


def test_spatter_tiny_images_finite():
    x = natural_images(40, 8)
    for s in range(1, 6):
        y = corrupt(x, "spatter", s)
        assert y.dtype == np.uint8


# --------------------------------------------------------------------------- readers
def _write_npy_set(folder: Path, n=4, size=8, channels=3, names=("fog", "contrast")):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for name in names:
        a = rng.integers(0, 256, (5 * n, size, size, channels)).astype(np.uint8)
        np.save(folder / f"{name}.npy", a)
        arrays[name] = a
    labels = np.tile(np.arange(n) % 3, 5).astype(np.uint8)
    np.save(folder / "labels.npy", labels)
    return arrays, labels


def test_npy_reader_slices_severity(tmp_path):
    arrays, labels = _write_npy_set(tmp_path / "CIFAR-10-C")
    ds = load_corrupted("cifar10-c", "fog", 3, root=tmp_path)
    assert ds.x.shape == (4, 3, 8, 8) and ds.x.dtype.is_floating_point and ds.y.dtype.is_signed
    np.testing.assert_allclose(ds.x[2].permute(1, 2, 0).numpy() * 255, arrays["fog"][2 * 4 + 2], atol=1e-4)
    assert ds.y.tolist() == list(labels[:4])
    assert C.available_corruptions("cifar10-c", root=tmp_path) == ["fog", "contrast"]
    grey, _ = _write_npy_set(tmp_path / "grey", channels=1)
    assert load_corrupted(tmp_path / "grey", "contrast", 5).x.shape == (4, 1, 8, 8)


def test_npy_reader_partial_sets(tmp_path):
    arrays, _ = _write_npy_set(tmp_path / "CIFAR-10-C")
    with pytest.raises(FileNotFoundError, match="CIFAR-10-C/snow.npy.*holds \\['fog', 'contrast'\\]"):
        load_corrupted("cifar10-c", "snow", 1, root=tmp_path)
    (tmp_path / "CIFAR-10-C" / "labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match="labels.npy"):
        load_corrupted("cifar10-c", "fog", 1, root=tmp_path)
    _write_npy_set(tmp_path / "trunc")
    path = tmp_path / "trunc" / "fog.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="trunc/fog.npy"):
        load_corrupted(tmp_path / "trunc", "fog", 1)
    _write_npy_set(tmp_path / "rows")
    np.save(tmp_path / "rows" / "fog.npy", arrays["fog"][:-1])
    with pytest.raises(ValueError, match="rows/fog.npy has 19 rows"):
        load_corrupted(tmp_path / "rows", "fog", 1)
    np.save(tmp_path / "rows" / "fog.npy", arrays["fog"])
    np.save(tmp_path / "rows" / "labels.npy", np.zeros(7, np.uint8))
    with pytest.raises(ValueError, match="rows/labels.npy has shape \\(7,\\)"):
        load_corrupted(tmp_path / "rows", "fog", 1)
    with pytest.raises(FileNotFoundError, match="CIFAR-100-C.*zenodo"):
        load_corrupted("cifar100-c", "fog", 1, root=tmp_path)
    with pytest.raises(ValueError, match="Valid corrupted dataset names: .*cifar10-c"):
        load_corrupted("cifar10c-nope", "fog", 1, root=tmp_path)
    with pytest.raises(ValueError, match="Valid corruption names"):
        load_corrupted("cifar10-c", "fogg", 1, root=tmp_path)


def _write_folder_set(base: Path, size: int, names=("fog",), severities=(1, 2, 3, 4, 5)):
    rng = np.random.default_rng(0)
    for name in names:
        for s in severities:
            for wnid in ("n01", "n02"):
                d = base / name / str(s) / wnid
                d.mkdir(parents=True)
                for k in range(2):
                    im = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
                    Image.fromarray(im).save(d / f"img{k}.JPEG", quality=85)


def test_folder_reader(tmp_path):
    _write_folder_set(tmp_path / "Tiny-ImageNet-C", 64)
    ds = load_corrupted("tinyimagenet-c", "fog", 2, root=tmp_path)
    assert len(ds) == 4 and ds[0][0].shape == (3, 64, 64) and ds.targets == [0, 0, 1, 1]
    _write_folder_set(tmp_path / "ImageNet-C", 224, severities=(1, 2))
    assert load_corrupted("imagenet-c", "fog", 1, root=tmp_path)[0][0].shape == (3, 224, 224)
    sub = load_corrupted("imagenet-c", "fog", 1, root=tmp_path, image_size=112, classes=["n02"])
    assert len(sub) == 2 and sub[0][0].shape == (3, 112, 112) and sub[0][1] == 0
    with pytest.raises(FileNotFoundError, match="ImageNet-C/fog/3"):
        load_corrupted("imagenet-c", "fog", 3, root=tmp_path)
    with pytest.raises(FileNotFoundError, match="n03"):
        load_corrupted("imagenet-c", "fog", 1, root=tmp_path, classes=["n03"])


# --------------------------------------------------------------------------- writer / CLI
def test_cli_writes_partial_severities_and_resumes(tmp_path, capsys):
    from probelib.__main__ import main

    out = tmp_path / "digits-c"
    assert main(["corrupt", "digits", "--out", str(out), "--corruptions", "fogg"]) == 2
    assert "Valid corruption names" in capsys.readouterr().err and not out.exists()
    assert main(["corrupt", "digits", "--out", str(out), "--severities", "0"]) == 2
    assert not out.exists()
    args = ["corrupt", "digits", "--out", str(out), "--corruptions", "contrast,gaussian_noise",
            "--severities", "3,1"]
    assert main(args) == 0
    arr = np.load(out / "gaussian_noise.npy")
    labels = np.load(out / "labels.npy")
    from probelib.data import load_dataset
    test = load_dataset("digits").test
    n = len(test)
    assert arr.shape == (2 * n, 8, 8, 1) and labels.shape == (2 * n,) and labels.dtype == np.uint8
    side = json.loads((out / "gaussian_noise.json").read_text())
    assert side["severities"] == [1, 3] and side["seed"] == 0 and "numpy" in side["versions"]
    x = np.round(test.x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    ds = load_corrupted(out, "gaussian_noise", 3)
    np.testing.assert_allclose(ds.x.permute(0, 2, 3, 1).numpy() * 255,
                               corrupt(x, "gaussian_noise", 3), atol=1e-4)
    assert ds.y.tolist() == test.y.tolist()
    with pytest.raises(ValueError, match="severities \\[1, 3\\] only"):
        load_corrupted(out, "gaussian_noise", 2)
    mtime = (out / "contrast.npy").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "contrast.npy").stat().st_mtime_ns == mtime
    # a file written by another generator version (different bytes) is regenerated, not reused
    side = json.loads((out / "contrast.json").read_text())
    (out / "contrast.json").write_text(json.dumps(dict(side, generator=side["generator"] - 1)))
    assert main(args) == 0
    assert (out / "contrast.npy").stat().st_mtime_ns != mtime
    assert json.loads((out / "contrast.json").read_text())["generator"] == side["generator"]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.mark.slow
def test_mnist5k_c_embedded(data_root):
    ds = load_corrupted("mnist5k-c", "fog", 5, root=data_root)
    assert ds.x.shape == (1000, 1, 28, 28)
    folder = data_root / "mnist5k-c"
    assert sorted(p.stem for p in folder.glob("*.npy")) == sorted(CORRUPTIONS + ["labels"])
    from probelib.data import load_dataset
    test = load_dataset("mnist5k").test
    x = np.round(test.x[:5].permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    np.testing.assert_allclose(ds.x[:5].permute(0, 2, 3, 1).numpy() * 255, corrupt(x, "fog", 5), atol=1e-4)
    assert ds.y.tolist() == test.y.tolist()


# --------------------------------------------------------------------------- analysis helpers
def test_setting_stats_and_aggregates():
    import pandas as pd

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    nn = np.where(rng.random(200) < 0.7, y, (y + 1) % 3)
    pred = np.where(rng.random(200) < 0.8, nn, (nn + 2) % 3)
    st = C.setting_stats(pred, y, nn)
    assert st["ncg"] == np.mean(pred == nn) and st["accuracy"] == np.mean(pred == y)
    assert st["acc_ncg_correct"] > st["acc_ncg_incorrect"] and st["p"] < 0.05
    rows = [{"method": m, "corruption": c, "severity": s, "ncg": base - k * s}
            for m, base, k in (("natural", 0.8, 0.1), ("trades", 0.8, 0.05))
            for c in ("fog", "snow") for s in range(1, 6)]
    df = pd.DataFrame(rows)
    agg = C.robust_vs_natural(df, "trades")
    assert agg["settings"] == 10 and agg["diff_mean"] == pytest.approx(0.05 * 3) and agg["robust_higher"] == 10
    slopes = C.severity_slopes(df)
    assert slopes.set_index(["method", "corruption"]).loc[("natural", "fog"), "slope"] == pytest.approx(-0.4)


def test_corrupted_ncg_table_wo_variant_drops_and_relabels_the_held_out_class(tmp_path):
    """The "wo" variant (spec §1.4): images of the held-out class leave the set, the others take
    the models' labels; with label_map=None (nowo) every image counts."""
    import torch
    from torch import nn

    from probelib.data import as_tensors, held_out_label_map, load_dataset
    test = load_dataset("digits").test
    x, y = as_tensors(test)
    out = C.write_corrupted(C.to_uint8_images(x), y.numpy(), tmp_path / "digits-c", ["contrast"], [1],
                            progress=False)
    train_x, train_y = as_tensors(load_dataset("digitswo3").train)  # labels 0..8, digit 3 held out

    class Echo(nn.Module):  # predicts the label of the nearest training image, i.e. NCG = 1
        def forward(self, q):
            d = torch.cdist(q.flatten(1), train_x.flatten(1))
            return nn.functional.one_hot(train_y[d.argmin(1)], 9).float()

    mapping = held_out_label_map("digits", 10, 3)
    wo = C.corrupted_ncg_table({"echo": Echo()}, train_x, train_y, out, severities=[1], label_map=mapping,
                               store=False)
    nowo = C.corrupted_ncg_table({"echo": Echo()}, train_x, train_y, out, severities=[1], store=False)
    assert wo["n"].item() == int((y != 3).sum()) and nowo["n"].item() == len(y)
    assert wo["ncg"].item() == 1.0
    # relabelled: digit 4 is label 3 for the models, so accuracy is that of the 9 seen classes
    seen = y != 3
    relabelled = torch.tensor([mapping[int(v)] for v in y[seen]])
    cx = as_tensors(C.load_corrupted(out, "contrast", 1))[0][seen]
    pred = Echo()(cx).argmax(1)
    assert wo["accuracy"].item() == pytest.approx(float((pred == relabelled).float().mean()))
