"""Digital corruptions (and brightness/saturate, which share the HSV round trip): contrast,
elastic transform, pixelate, JPEG."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from probelib.corruptions._kernels import _blocks, _per_image
from probelib.corruptions.registry import register


_HSV_BLOCK = 16384
# candidate (0 v, 1 q, 2 p, 3 t) of R, G, B per hue sector 0..6 (6 = ⌊6h⌋ rounding up to 6: sector 0)
_RGB_CAND = np.array([[0, 1, 2, 2, 3, 0, 0], [3, 0, 0, 1, 2, 2, 3], [2, 2, 3, 0, 0, 1, 2]], np.intp)


def _hsv_edit(x: np.ndarray, brightness: float | None = None, saturation: tuple | None = None) -> np.ndarray:
    """uint8 RGB → skimage HSV (float64) → V + brightness or S·mul + add, clipped to [0, 1] →
    RGB, clipped, ×255, truncated to uint8. The same float64 values as the plain per-formula
    conversion in tests/test_corruptions.py (bit-identical for all 2²⁴ colours, checked), on blocks of pixels: the
    three hue branches are selected instead of masked, ``(h/6) % 1`` is h/6 + (h < 0) for
    h ∈ [−1, 5], and each channel gathers its candidate by sector."""
    flat = x.reshape(-1, 3)
    out = np.empty_like(flat)
    for a in range(0, len(flat), _HSV_BLOCK):
        blk = flat[a:a + _HSV_BLOCK]
        m = len(blk)
        r, g, b = (p.reshape(m) / 255.0 for p in cv2.split(blk.reshape(m, 1, 3)))
        v = np.maximum(r, g)
        np.maximum(v, b, out=v)
        delta = np.minimum(r, g)
        np.minimum(delta, b, out=delta)
        np.subtract(v, delta, out=delta)
        flat_px = delta == 0
        is_b = b == v
        is_g = g == v
        is_g &= ~is_b
        hue = np.where(is_b, r - g, np.where(is_g, b - r, g - b))
        hue /= np.where(flat_px, 1.0, delta)
        hue += np.where(is_b, 4.0, np.where(is_g, 2.0, 0.0))
        hue /= 6.0
        hue += hue < 0                                       # % 1.0 on [−1/6, 5/6]
        hue *= ~flat_px                                      # grey: hue 0
        sat = delta / np.where(v == 0, 1.0, v)
        if brightness is not None:
            v += brightness
            np.clip(v, 0, 1, out=v)
        if saturation is not None:
            sat *= saturation[0]
            sat += saturation[1]
            np.clip(sat, 0, 1, out=sat)
        # back to RGB: sector = ⌊6h⌋, f = 6h − sector; candidates v, q, p, t
        hue *= 6
        sector = np.floor(hue)
        f = np.subtract(hue, sector, out=hue)
        sector = sector.astype(np.intp)
        cand = np.empty((4, m))
        cand[0] = v
        np.multiply(f, sat, out=cand[1])                     # q = v (1 − f s)
        np.subtract(1, cand[1], out=cand[1])
        cand[1] *= v
        np.subtract(1, sat, out=cand[2])                     # p = v (1 − s)
        cand[2] *= v
        np.subtract(1, f, out=cand[3])                       # t = v (1 − (1 − f) s)
        cand[3] *= sat
        np.subtract(1, cand[3], out=cand[3])
        cand[3] *= v
        cand = cand.reshape(-1)
        base = np.arange(m)
        for ch in range(3):
            idx = np.take(_RGB_CAND[ch], sector)
            idx *= m
            idx += base
            val = np.take(cand, idx)
            np.clip(val, 0, 1, out=val)
            val *= 255
            out[a:a + m, ch] = val
    return out.reshape(x.shape)


@register("brightness", "weather", 10, {"cifar": [0.05, 0.1, 0.15, 0.2, 0.3],
                                        "tin": [0.1, 0.2, 0.3, 0.4, 0.5],
                                        "in": [0.1, 0.2, 0.3, 0.4, 0.5]}, deterministic=True, monotone=True)
def _brightness(x, delta, rngs, pset):
    return _hsv_edit(x, brightness=delta)


@register("saturate", "digital", 18, {"cifar": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
                                      "tin": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (30, 0.2)],
                                      "in": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)]},
          benchmark=False, deterministic=True)
def _saturate(x, params, rngs, pset):
    return _hsv_edit(x, saturation=params)


@register("contrast", "digital", 11, {"cifar": [0.75, 0.5, 0.4, 0.3, 0.15],
                                      "tin": [0.4, 0.3, 0.2, 0.1, 0.05],
                                      "in": [0.4, 0.3, 0.2, 0.1, 0.05]}, deterministic=True, monotone=True)
def _contrast(x, c, rngs, pset):
    n, h, w, _ = x.shape
    out = np.empty(x.shape, np.uint8)
    for sl in _blocks(n, h, w):
        xb = x[sl] / 255.0
        means = xb.mean(axis=(1, 2), keepdims=True)
        xb -= means
        xb *= c
        xb += means
        np.clip(xb, 0, 1, out=xb)
        xb *= 255
        out[sl] = xb
    return out


def _reflect_index(i: np.ndarray, n: int) -> np.ndarray:
    """scipy 'reflect' (d c b a | a b c d | d c b a) for integer indices."""
    i = np.mod(i, 2 * n)
    return np.where(i >= n, 2 * n - 1 - i, i)


def _gaussian_matrix(length: int, sigma: float, truncate: float) -> np.ndarray:
    """L×L matrix of scipy ``gaussian_filter1d(mode='reflect', truncate)`` along one axis."""
    radius = int(truncate * float(sigma) + 0.5)
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * taps ** 2 / float(sigma) ** 2)
    weights /= weights.sum()
    m = np.zeros((length, length))
    rows = np.repeat(np.arange(length), len(taps))
    cols = _reflect_index(np.arange(length)[:, None] + taps[None, :], length).ravel()
    np.add.at(m, (rows, cols), np.tile(weights, length))
    return m


@register("elastic_transform", "digital", 12, {"cifar": [(0, 0, 0.08), (0.05, 0.2, 0.07),
                                                         (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                                                         (0.1, 0.03, 0.03)],
                                               "tin": [(0, 0, 0.08), (0.05, 0.3, 0.06), (0.1, 0.08, 0.06),
                                                       (0.1, 0.03, 0.03), (0.16, 0.03, 0.02)],
                                               "in": [(2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02),
                                                      (0.07, 0.01, 0.02), (0.12, 0.01, 0.02)]})
def _elastic_transform(x, params, rngs, pset):
    n, h, w, c = x.shape
    s = max(h, w)
    unit = 244 * s / 224 if pset == "in" else s
    alpha, sigma, aff = (p * unit for p in params)
    x = x.astype(np.float32) / 255
    cx, cy, sq = w // 2, h // 2, min(h, w) // 3
    pts1 = np.float32([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]])
    warped = np.empty_like(x)
    displace = alpha != 0        # α = 0 (CIFAR/TIN severity 1): zero field, bilinear at the pixels: identity
    fields = np.empty((n, 2, h, w)) if displace else None
    for i, r in enumerate(rngs):
        pts2 = pts1 + r.uniform(-aff, aff, size=pts1.shape).astype(np.float32)
        m = cv2.getAffineTransform(pts1, pts2)
        cv2.warpAffine(x[i], m, (w, h), dst=warped[i], borderMode=cv2.BORDER_REFLECT_101)
        if displace:                                  # the last draws of the image (dx, then dy)
            fields[i] = r.uniform(-1, 1, size=(2, h, w))
    if not displace:
        np.clip(warped, 0, 1, out=warped)
        warped *= 255
        return warped
    if sigma > 0:
        gh, gw = _gaussian_matrix(h, sigma, 3.0), _gaussian_matrix(w, sigma, 3.0)
        fields = gh @ fields @ gw.T
    fields *= alpha
    fields = fields.astype(np.float32)
    return _bilinear_reflect_fields(warped, fields)


def _bilinear_reflect_fields(img: np.ndarray, fields: np.ndarray) -> np.ndarray:
    """``map_coordinates(img, (i + dy, j + dx), order=1, mode='reflect')`` per image and channel
    (N×H×W×C float32 image, N×2×H×W float32 (dx, dy) fields), clipped to [0, 1], ×255, uint8.

    Float64 weights (1−fr)(1−fc), (1−fr)fc, fr(1−fc), fr·fc of the fractional coordinates (i + dy is
    exact in float64, so its floor is i + ⌊dy⌋ and fr = dy − ⌊dy⌋), summed in that order, on blocks;
    the reflected neighbour indices come from small lookup tables over the range of ⌊dy⌋, ⌊dx⌋."""
    n, h, w, c = img.shape
    planes = np.ascontiguousarray(img.reshape(n * h * w, c).T, dtype=np.float64)   # C × pixels, exact
    out = np.empty(img.shape, np.uint8)
    fy_all, fx_all = np.floor(fields[:, 1]), np.floor(fields[:, 0])
    lo_r, hi_r = int(fy_all.min()), int(fy_all.max()) + h
    lo_c, hi_c = int(fx_all.min()), int(fx_all.max()) + w
    rows = np.arange(lo_r, hi_r + 1)
    cols = np.arange(lo_c, hi_c + 1)
    row_a, row_b = _reflect_index(rows, h) * w, _reflect_index(rows + 1, h) * w
    col_a, col_b = _reflect_index(cols, w), _reflect_index(cols + 1, w)
    ii = (np.arange(h) - lo_r)[:, None]
    jj = (np.arange(w) - lo_c)[None, :]
    for sl in _blocks(n, h, w, 16384):
        m = sl.stop - sl.start
        fy, fx = fy_all[sl], fx_all[sl]
        dy = fields[sl, 1] - fy.astype(np.float64)        # fr (exact)
        dx = fields[sl, 0] - fx.astype(np.float64)        # fc
        r = fy.astype(np.intp)
        r += ii
        q = fx.astype(np.intp)
        q += jj
        base = (np.arange(sl.start, sl.stop) * (h * w))[:, None, None]
        ra = row_a[r]
        ra += base
        rb = row_b[r]
        rb += base
        ca, cb = col_a[q], col_b[q]
        gr = 1 - dy
        gc = 1 - dx
        acc = np.take(planes, (ra + ca).reshape(-1), axis=1)
        acc *= (gr * gc).reshape(-1)
        for idx, wgt in ((ra + cb, gr * dx), (rb + ca, dy * gc), (rb + cb, dy * dx)):
            term = np.take(planes, idx.reshape(-1), axis=1)
            term *= wgt.reshape(-1)
            acc += term
        np.clip(acc, 0, 1, out=acc)
        acc *= 255
        out[sl] = acc.reshape(c, m, h, w).transpose(1, 2, 3, 0)
    return out


@register("pixelate", "digital", 13, {"cifar": [0.95, 0.9, 0.85, 0.75, 0.65],
                                      "tin": [0.9, 0.8, 0.7, 0.6, 0.5],
                                      "in": [0.6, 0.5, 0.4, 0.3, 0.25]}, deterministic=True, monotone=True)
def _pixelate(x, f, rngs, pset):
    n, h, w, _ = x.shape
    small = (int(w * f), int(h * f))
    return _per_image(x, lambda im: np.asarray(
        Image.fromarray(im).resize(small, Image.BOX).resize((w, h), Image.BOX)))


@register("jpeg_compression", "digital", 14, {"cifar": [80, 65, 58, 50, 40],
                                              "tin": [65, 58, 50, 40, 25],
                                              "in": [25, 18, 15, 10, 7]}, deterministic=True, monotone=True)
def _jpeg(x, quality, rngs, pset):
    """PIL JPEG at ``quality`` (4:2:0, baseline, standard tables) and back, through OpenCV's
    codec: the same libjpeg(-turbo) settings, so the same bytes and pixels as PIL with the pinned
    Pillow and OpenCV (checked, and ±1 in the tests' tolerance where builds differ), at a
    fifth of PIL's per-image overhead."""
    bgr = np.ascontiguousarray(x[..., ::-1])
    out = np.empty_like(x)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)
    encode, decode = cv2.imencode, cv2.imdecode
    for i in range(len(x)):
        buf = encode(".jpg", bgr[i], params)[1]
        out[i] = decode(buf, rgb_flag) if rgb_flag is not None else decode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return out
