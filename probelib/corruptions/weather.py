"""Weather corruptions: snow, frost, fog (plasma fractal) and spatter (brightness, also a weather
corruption, shares the HSV round trip in digital.py)."""

from __future__ import annotations

import hashlib
import math

import cv2
import numpy as np

from probelib.corruptions._kernels import _blocks, _blur, _draw, _motion_blur, _zoom_taps
from probelib.corruptions.registry import register

#: frost textures are resized by this factor per parameter set
FROST_SCALE = {"cifar": 0.2, "tin": 0.3, "in": 1.0}


def _luma_f32(x: np.ndarray) -> np.ndarray:
    """OpenCV RGB2GRAY on float32 RGB: 0.299 R + 0.587 G + 0.114 B."""
    return (x[..., 0] * np.float32(0.299) + x[..., 1] * np.float32(0.587)
            + x[..., 2] * np.float32(0.114))[..., None]


@register("snow", "weather", 7, {"cifar": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                                           (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                                           (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                                           (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
                                 "tin": [(0.1, 0.2, 1, 0.6, 8, 3, 0.8), (0.1, 0.2, 1, 0.5, 10, 4, 0.8),
                                         (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
                                         (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65),
                                         (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6)],
                                 "in": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
                                        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                                        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
                                        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)]}, monotone=True)
def _snow(x, params, rngs, pset):
    mu, sd, zoom, thr, radius, sigma_m, blend = params
    n, h, w, _ = x.shape
    layer = np.empty((n, h, w))
    angles = np.empty(n)
    for i, r in enumerate(rngs):
        layer[i] = r.normal(mu, sd, (h, w))
        angles[i] = r.uniform(-135, -45)
    # clipped_zoom → zero below thr → uint8, block by block
    taps = None if zoom == 1 else (_zoom_taps(h, zoom), _zoom_taps(w, zoom))
    snow = np.empty((n, h, w, 1), np.uint8)
    for sl in _blocks(n, h, w, 65536):
        lb = layer[sl]
        if taps is not None:
            (r0, r1, fr), (c0, c1, fc) = taps
            lb = lb[:, r0] * (1 - fr)[:, None] + lb[:, r1] * fr[:, None]
            lb = lb[:, :, c0] * (1 - fc) + lb[:, :, c1] * fc
        lb[lb < thr] = 0
        np.clip(lb, 0, 1, out=lb)
        lb *= 255
        snow[sl, ..., 0] = lb
    snow = _motion_blur(snow, radius, sigma_m, angles)
    out = np.empty(x.shape, np.uint8)
    for sl in _blocks(n, h, w):
        xf = x[sl].astype(np.float32) / 255
        lb = snow[sl].astype(np.float32) / 255
        y = blend * xf
        y += (1 - blend) * np.maximum(xf, _luma_f32(xf) * 1.5 + 0.5)
        y += lb
        y += lb[:, ::-1, ::-1]
        np.clip(y, 0, 1, out=y)
        y *= 255
        out[sl] = y
    return out


# frost textures: the five the originals use, from the installed imagecorruptions package
FROST_FILES = {"frost1.png": "aae1c580d67a272e25f02d3ae24181af0c69712c",
               "frost2.png": "cc9a719e118e3cd008657780ac1a9ec080af25df",
               "frost3.png": "961f49cf57e4bc24cd03428cba01b5a709a00286",
               "frost4.jpg": "07f29236db97467de9bd5843915a09160a7b67ab",
               "frost5.jpg": "e643718fde1eb19052f1646bb0dc0f1cbe2e99f2"}
_FROST_CACHE: dict[float, list[np.ndarray]] = {}


def frost_textures(scale: float = 1.0) -> list[np.ndarray]:
    """The five frost textures (RGB uint8), resized by ``scale`` (bilinear), SHA-1 checked."""
    if scale in _FROST_CACHE:
        return _FROST_CACHE[scale]
    import importlib.resources as resources

    try:
        folder = resources.files("imagecorruptions") / "frost"
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "frost needs the frost textures of the 'imagecorruptions' package: "
            "pip install imagecorruptions-imaug==1.1.5 (it is in requirements.txt)") from None
    textures = []
    for name, sha1 in FROST_FILES.items():
        f = folder / name
        if not f.is_file():
            raise FileNotFoundError(f"frost texture {f} is missing from the installed imagecorruptions "
                                    "package; reinstall imagecorruptions-imaug==1.1.5")
        data = f.read_bytes()
        if hashlib.sha1(data).hexdigest() != sha1:
            raise ValueError(f"frost texture {f} has SHA-1 {hashlib.sha1(data).hexdigest()}, expected "
                             f"{sha1}; reinstall imagecorruptions-imaug==1.1.5")
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if scale != 1.0:
            bgr = cv2.resize(bgr, (0, 0), fx=scale, fy=scale)
        textures.append(np.ascontiguousarray(bgr[..., ::-1]))
    _FROST_CACHE[scale] = textures
    return textures


@register("frost", "weather", 8, {"cifar": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
                                  "tin": [(1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)],
                                  "in": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)]})
def _frost(x, params, rngs, pset):
    a, b = params
    n, h, w, _ = x.shape
    textures = frost_textures(FROST_SCALE[pset])
    crops = []
    for r in rngs:
        tex = textures[int(r.integers(5))]
        if tex.shape[0] <= h or tex.shape[1] <= w:   # larger than the published sizes: upscale
            f = 1.05 * max((h + 1) / tex.shape[0], (w + 1) / tex.shape[1])
            tex = cv2.resize(tex, (0, 0), fx=f, fy=f)
        top = int(r.integers(0, tex.shape[0] - h))
        left = int(r.integers(0, tex.shape[1] - w))
        crops.append(tex[top:top + h, left:left + w])
    # a·x + b·texture, clipped, truncated, depends on the two uint8 values only: a 256×256 table
    # computed with the originals' float64 operations, then one lookup per element
    table = np.clip(a * np.arange(256.0)[:, None] + b * np.arange(256, dtype=np.uint8)[None, :], 0, 255)
    table = table.astype(np.uint8).ravel()
    key = x.astype(np.uint16) << 8
    key |= np.stack(crops)
    return table[key]


def _plasma_draw_count(mapsize: int) -> int:
    return 3 * sum((mapsize // s) ** 2 for s in 2 ** np.arange(int(math.log2(mapsize)), 0, -1))


def plasma_fractal(uniform: np.ndarray, mapsize: int, decay: float) -> np.ndarray:
    """Diamond-square plasma maps N×M×M in [0, 1] from N rows of U[0,1) draws (spec §3, fog).

    Each step draws U(−wibble, wibble) for the squares, then the two diamond sets, each then
    multiplied by wibble again (the originals' quirk); wibble /= decay after each step.
    """
    n = uniform.shape[0]
    m = np.zeros((n, mapsize, mapsize))
    step, wibble, pos = mapsize, 100.0, 0
    while step >= 2:
        half, k = step // 2, mapsize // step

        def noise() -> np.ndarray:
            nonlocal pos
            u = uniform[:, pos:pos + k * k].reshape(n, k, k)
            pos += k * k
            return wibble * (-wibble + 2 * wibble * u)

        corners = m[:, 0::step, 0::step]
        sq = corners + np.roll(corners, -1, axis=1)
        sq = sq + np.roll(sq, -1, axis=2)
        m[:, half::step, half::step] = sq / 4 + noise()
        dr, ul = m[:, half::step, half::step], m[:, 0::step, 0::step]
        left = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2)
        m[:, 0::step, half::step] = left / 4 + noise()
        top = dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1)
        m[:, half::step, 0::step] = top / 4 + noise()
        step //= 2
        wibble /= decay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


@register("fog", "weather", 9, {"cifar": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
                                "tin": [(0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)],
                                "in": [(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)]}, monotone=True)
def _fog(x, params, rngs, pset):
    strength, decay = params
    n, h, w, _ = x.shape
    mapsize = 1 << max(1, int(math.ceil(math.log2(max(h, w)))))
    count = _plasma_draw_count(mapsize)
    uniform = np.empty((n, count))
    for r, row in zip(rngs, uniform):
        r.random(out=row)
    maps = plasma_fractal(uniform, mapsize, decay)
    degenerate = bool(np.isnan(maps).any())      # a constant map normalises to 0/0: those pixels → 0
    out = np.empty(x.shape, np.uint8)
    for sl in _blocks(n, h, w):
        xb = x[sl] / 255.0
        max_val = x[sl].max(axis=(1, 2, 3), keepdims=True) / 255.0     # = max of x / 255.0
        xb += strength * maps[sl, :h, :w, None]
        xb *= max_val
        xb /= max_val + strength
        np.clip(xb, 0, 1, out=xb)
        xb *= 255
        if degenerate:
            np.nan_to_num(xb, copy=False, nan=0.0)
        out[sl] = xb
    return out


_EMBOSS = np.float32([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
_WATER = np.array([175, 238, 238]) / 255.0
_MUD = np.array([63, 42, 20]) / 255.0


def _water_mask(liquid: np.ndarray) -> np.ndarray:
    """Spatter's water mask of one liquid layer (H×W float): liquid·dist / max (0 when empty)."""
    liquid_u8 = np.clip(liquid * 255, 0, 255).astype(np.uint8)
    dist = 255 - cv2.Canny(liquid_u8, 50, 150)
    dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
    dist = cv2.equalizeHist(dist)
    dist = cv2.filter2D(dist, cv2.CV_8U, _EMBOSS)
    dist = cv2.blur(dist, (3, 3)).astype(np.float32)
    m = liquid_u8 * dist
    peak = m.max()
    return m / peak if peak > 0 else np.zeros_like(m)   # no liquid survived: no spatter


@register("spatter", "weather", 17, {"cifar": [(0.62, 0.1, 0.7, 0.7, 0.5, 0),
                                               (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
                                               (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                                               (0.65, 0.1, 0.5, 0.68, 0.6, 1)],
                                     "tin": [(0.62, 0.1, 0.7, 0.7, 0.6, 0), (0.65, 0.1, 0.8, 0.7, 0.6, 0),
                                             (0.65, 0.3, 1, 0.69, 0.6, 0), (0.65, 0.1, 0.7, 0.68, 0.6, 1),
                                             (0.65, 0.1, 0.5, 0.67, 0.6, 1)],
                                     "in": [(0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0),
                                            (0.65, 0.3, 2, 0.68, 0.5, 0), (0.65, 0.3, 1, 0.65, 1.5, 1),
                                            (0.67, 0.4, 1, 0.65, 1.5, 1)]}, benchmark=False, may_be_nan=True)
def _spatter(x, params, rngs, pset):
    mu, sd, blur, thr, k, mud = params
    n, h, w, _ = x.shape
    x = x.astype(np.float32) / 255
    liquid = _blur(_draw(rngs, lambda r: r.normal(mu, sd, (h, w))), blur)
    liquid[liquid < thr] = 0
    if mud == 0:
        m = np.stack([_water_mask(li) for li in liquid])[..., None] * k
        return np.clip(x + m * _WATER, 0, 1) * 255
    m = _blur((liquid > thr).astype(np.float32), k)
    m[m < 0.8] = 0
    m = m[..., None]
    return np.clip(x * (1 - m) + m * _MUD, 0, 1) * 255
