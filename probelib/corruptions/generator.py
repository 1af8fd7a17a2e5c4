"""The corruption generator: names, published parameters, and :func:`corrupt` (spec §2–§4)."""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

from probelib._util import unknown_name

# --------------------------------------------------------------------------- names
GROUPS: dict[str, list[str]] = {
    "noise": ["gaussian_noise", "shot_noise", "impulse_noise"],
    "blur": ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur"],
    "weather": ["snow", "frost", "fog", "brightness"],
    "digital": ["contrast", "elastic_transform", "pixelate", "jpeg_compression"],
    "extra": ["speckle_noise", "gaussian_blur", "spatter", "saturate"],
}
BENCHMARK: list[str] = [n for g in ("noise", "blur", "weather", "digital") for n in GROUPS[g]]
EXTRA: list[str] = list(GROUPS["extra"])
CORRUPTIONS: list[str] = BENCHMARK + EXTRA          # position = "corruption index" (seeding)
DETERMINISTIC = frozenset({"gaussian_blur", "defocus_blur", "zoom_blur", "contrast", "brightness",
                           "saturate", "jpeg_compression", "pixelate"})
SEVERITIES = (1, 2, 3, 4, 5)


def corruption_names(extra: bool = False) -> list[str]:
    """The 15 benchmark corruptions in canonical order; with ``extra`` also the 4 validation ones."""
    return list(CORRUPTIONS if extra else BENCHMARK)


def corruption_group(name: str) -> str:
    """The group (``noise``, ``blur``, ``weather``, ``digital`` or ``extra``) of a corruption."""
    _check_corruption(name)
    return next(g for g, names in GROUPS.items() if name in names)


def _check_corruption(name: str) -> str:
    if name not in CORRUPTIONS:
        raise unknown_name("corruption", name, CORRUPTIONS)
    return name


def _check_severity(severity, name: str = "severity") -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ValueError(f"{name} must be an integer in 1..5, got {severity!r}")
    return int(severity)


# --------------------------------------------------------------------------- parameters (spec §2)
# name -> {"cifar": [sev1..sev5], "tin": [...], "in": [...]}
PARAMS: dict[str, dict[str, list]] = {
    "gaussian_noise": {"cifar": [.04, .06, .08, .09, .10], "tin": [.04, .08, .12, .15, .18],
                       "in": [.08, .12, .18, .26, .38]},
    "shot_noise": {"cifar": [500, 250, 100, 75, 50], "tin": [250, 100, 50, 30, 15],
                   "in": [60, 25, 12, 5, 3]},
    "impulse_noise": {"cifar": [.01, .02, .03, .05, .07], "tin": [.01, .02, .05, .08, .14],
                      "in": [.03, .06, .09, .17, .27]},
    "speckle_noise": {"cifar": [.06, .10, .12, .16, .20], "tin": [.15, .20, .25, .30, .35],
                      "in": [.15, .20, .35, .45, .60]},
    "gaussian_blur": {"cifar": [.4, .6, .7, .8, 1], "tin": [.5, .75, 1, 1.25, 1.5],
                      "in": [1, 2, 3, 4, 6]},
    "glass_blur": {"cifar": [(.05, 1, 1), (.25, 1, 1), (.4, 1, 1), (.25, 1, 2), (.4, 1, 2)],
                   "tin": [(.1, 1, 1), (.5, 1, 1), (.6, 1, 2), (.7, 2, 1), (.9, 2, 2)],
                   "in": [(.7, 1, 2), (.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)]},
    "defocus_blur": {"cifar": [(.3, .4), (.4, .5), (.5, .6), (1, .2), (1.5, .1)],
                     "tin": [(.5, .6), (1, .1), (1.5, .1), (2.5, .01), (3, .1)],
                     "in": [(3, .1), (4, .5), (6, .5), (8, .5), (10, .5)]},
    "motion_blur": {"cifar": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
                    "tin": [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)],
                    "in": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)]},
    "zoom_blur": {"cifar": [(1.06, .01), (1.11, .01), (1.16, .01), (1.21, .01), (1.26, .01)],
                  "tin": [(1.06, .01), (1.11, .01), (1.16, .01), (1.21, .01), (1.26, .01)],
                  "in": [(1.11, .01), (1.16, .01), (1.21, .02), (1.26, .02), (1.31, .03)]},
    "snow": {"cifar": [(.1, .2, 1, .6, 8, 3, .95), (.1, .2, 1, .5, 10, 4, .9),
                       (.15, .3, 1.75, .55, 10, 4, .9), (.25, .3, 2.25, .6, 12, 6, .85),
                       (.3, .3, 1.25, .65, 14, 12, .8)],
             "tin": [(.1, .2, 1, .6, 8, 3, .8), (.1, .2, 1, .5, 10, 4, .8),
                     (.15, .3, 1.75, .55, 10, 4, .7), (.25, .3, 2.25, .6, 12, 6, .65),
                     (.3, .3, 1.25, .65, 14, 12, .6)],
             "in": [(.1, .3, 3, .5, 10, 4, .8), (.2, .3, 2, .5, 12, 4, .7),
                    (.55, .3, 4, .9, 12, 8, .7), (.55, .3, 4.5, .85, 12, 8, .65),
                    (.55, .3, 2.5, .85, 12, 12, .55)]},
    "frost": {"cifar": [(1, .2), (1, .3), (.9, .4), (.85, .4), (.75, .45)],
              "tin": [(1, .3), (.9, .4), (.8, .45), (.75, .5), (.7, .55)],
              "in": [(1, .4), (.8, .6), (.7, .7), (.65, .7), (.6, .75)]},
    "fog": {"cifar": [(.2, 3), (.5, 3), (.75, 2.5), (1, 2), (1.5, 1.75)],
            "tin": [(.4, 3), (.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)],
            "in": [(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)]},
    "brightness": {"cifar": [.05, .1, .15, .2, .3], "tin": [.1, .2, .3, .4, .5],
                   "in": [.1, .2, .3, .4, .5]},
    "contrast": {"cifar": [.75, .5, .4, .3, .15], "tin": [.4, .3, .2, .1, .05],
                 "in": [.4, .3, .2, .1, .05]},
    "elastic_transform": {"cifar": [(0, 0, .08), (.05, .2, .07), (.08, .06, .06), (.1, .04, .05),
                                    (.1, .03, .03)],
                          "tin": [(0, 0, .08), (.05, .3, .06), (.1, .08, .06), (.1, .03, .03),
                                  (.16, .03, .02)],
                          "in": [(2, .7, .1), (2, .08, .2), (.05, .01, .02), (.07, .01, .02),
                                 (.12, .01, .02)]},
    "pixelate": {"cifar": [.95, .9, .85, .75, .65], "tin": [.9, .8, .7, .6, .5],
                 "in": [.6, .5, .4, .3, .25]},
    "jpeg_compression": {"cifar": [80, 65, 58, 50, 40], "tin": [65, 58, 50, 40, 25],
                         "in": [25, 18, 15, 10, 7]},
    "spatter": {"cifar": [(.62, .1, .7, .7, .5, 0), (.65, .1, .8, .7, .5, 0), (.65, .3, 1, .69, .5, 0),
                          (.65, .1, .7, .69, .6, 1), (.65, .1, .5, .68, .6, 1)],
                "tin": [(.62, .1, .7, .7, .6, 0), (.65, .1, .8, .7, .6, 0), (.65, .3, 1, .69, .6, 0),
                        (.65, .1, .7, .68, .6, 1), (.65, .1, .5, .67, .6, 1)],
                "in": [(.65, .3, 4, .69, .6, 0), (.65, .3, 3, .68, .6, 0), (.65, .3, 2, .68, .5, 0),
                       (.65, .3, 1, .65, 1.5, 1), (.67, .4, 1, .65, 1.5, 1)]},
    "saturate": {"cifar": [(.3, 0), (.1, 0), (1.5, 0), (2, .1), (2.5, .2)],
                 "tin": [(.3, 0), (.1, 0), (2, 0), (5, .1), (30, .2)],
                 "in": [(.3, 0), (.1, 0), (2, 0), (5, .1), (20, .2)]},
}
FROST_SCALE = {"cifar": 0.2, "tin": 0.3, "in": 1.0}


def parameter_set(height: int, width: int) -> str:
    """``'cifar'`` (S ≤ 32), ``'tin'`` (S ≤ 64) or ``'in'`` for S = max(height, width)."""
    s = max(height, width)
    return "cifar" if s <= 32 else "tin" if s <= 64 else "in"


def severity_parameters(corruption: str, severity: int, height: int = 32, width: int | None = None):
    """The published parameters of ``corruption`` at ``severity`` for images of this size."""
    _check_corruption(corruption)
    severity = _check_severity(severity)
    return PARAMS[corruption][parameter_set(height, width or height)][severity - 1]


# --------------------------------------------------------------------------- shared helpers
def _blur(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """skimage ``gaussian`` per image (and per channel) over the batch axis 0: sigma on H, W only."""
    sig = [0.0, sigma, sigma] + [0.0] * (x.ndim - 3)
    return ndimage.gaussian_filter(x, sig, mode=mode, truncate=truncate)


def _zoom_taps(length: int, z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``clipped_zoom`` along one axis of length L as two taps per output: (i0, i1, frac).

    Centre-crop ⌈L/z⌉, zoom by ``z`` with linear interpolation at scipy ``zoom``'s coordinates
    o·(n−1)/(m−1) (order 1, m = round(n·z)), centre-trim back to L.
    """
    crop = int(math.ceil(length / z))
    top = (length - crop) // 2
    zoomed_len = int(round(crop * z))
    trim = (zoomed_len - length) // 2
    out_pos = np.arange(trim, trim + length, dtype=np.float64)
    coord = out_pos * ((crop - 1) / (zoomed_len - 1)) if zoomed_len > 1 else np.zeros(length)
    i0 = np.clip(np.floor(coord).astype(np.int64), 0, crop - 1)
    frac = coord - i0
    i1 = np.minimum(i0 + 1, crop - 1)
    return top + i0, top + i1, frac


def _zoom_hwk(x: np.ndarray, z: float) -> np.ndarray:
    """``clipped_zoom`` of H×W×K stacks (images and channels on the last axis)."""
    r0, r1, fr = _zoom_taps(x.shape[0], z)
    y = x[r0] * (1 - fr)[:, None, None] + x[r1] * fr[:, None, None]
    c0, c1, fc = _zoom_taps(x.shape[1], z)
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


def _motion_blur(img: np.ndarray, radius: float, sigma: float, angles_deg: np.ndarray) -> np.ndarray:
    """ImageMagick ``MotionBlurImage`` on uint8 images N×H×W×C, one angle per image (spec §3):
    width 2⌈radius⌉+1, weights ∝ exp(−i²/2σ²), taps at (⌈i·sinθ−½⌉, ⌈i·cosθ−½⌉), edge
    replication, Q16 quantisation ⌊round(257·f)/257⌋. Returns uint8."""
    n, h, w = img.shape[:3]
    width = 2 * int(math.ceil(radius)) + 1
    i = np.arange(width, dtype=np.float64)
    weights = np.exp(-i ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    theta = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))[:, None]
    dy = np.ceil(i[None] * np.sin(theta) - 0.5).astype(np.int64)   # N × width
    dx = np.ceil(i[None] * np.cos(theta) - 0.5).astype(np.int64)
    pad = int(max(np.abs(dy).max(), np.abs(dx).max()))
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")   # edge replication
    acc = np.zeros(img.shape, dtype=np.float64)
    for k in range(width):
        # images whose tap k has the same offset share one slice
        key = dy[:, k] * (4 * pad + 3) + dx[:, k]
        for u in np.unique(key):
            sel = np.flatnonzero(key == u)
            oy, ox = pad + dy[sel[0], k], pad + dx[sel[0], k]
            acc[sel] += weights[k] * padded[sel, oy:oy + h, ox:ox + w]
    return np.floor(np.rint(257.0 * acc) / 257.0).clip(0, 255).astype(np.uint8)


def _draw(rngs: Sequence[np.random.Generator], fn: Callable[[np.random.Generator], np.ndarray]):
    return np.stack([fn(r) for r in rngs])


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
    """RGB [0, 1] → HSV, ``fn`` edits it in place, → RGB, clipped and scaled to [0, 255]."""
    hsv = _rgb_to_hsv(x)
    fn(hsv)
    return np.clip(_hsv_to_rgb(hsv), 0, 1) * 255


def _per_image(x_u8: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.stack([fn(im) for im in x_u8])


# --------------------------------------------------------------------------- the corruptions
# Each takes (x_u8 N×H×W×3 uint8, params, rngs, pset) and returns float in [0, 255] or uint8.
def _gaussian_noise(x, sigma, rngs, pset):
    x = x.astype(np.float32) / np.float32(255)
    noise = _draw(rngs, lambda r: r.standard_normal(x.shape[1:], dtype=np.float32))
    noise *= np.float32(sigma)
    noise += x
    return np.clip(noise, 0, 1, out=noise) * np.float32(255)


def _shot_noise(x, c, rngs, pset):
    x = x / 255.0
    return np.clip(np.stack([r.poisson(xi * c) for r, xi in zip(rngs, x)]) / c, 0, 1) * 255


def _impulse_noise(x, amount, rngs, pset):
    x = x / 255.0
    shape = x.shape[1:]

    def draws(r):
        flipped = r.random(shape) <= amount
        salted = r.random(shape) <= 0.5
        return np.stack([flipped, salted])

    d = _draw(rngs, draws)
    flipped, salted = d[:, 0], d[:, 1]
    out = x.copy()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return np.clip(out, 0, 1) * 255


def _speckle_noise(x, sigma, rngs, pset):
    x = x.astype(np.float32) / np.float32(255)
    noise = _draw(rngs, lambda r: r.standard_normal(x.shape[1:], dtype=np.float32))
    noise *= np.float32(sigma)
    noise *= x
    noise += x
    return np.clip(noise, 0, 1, out=noise) * np.float32(255)


def _gaussian_blur(x, sigma, rngs, pset):
    return np.clip(_blur(x / 255.0, sigma), 0, 1) * 255


def _glass_sources(h: int, w: int, delta: int, d: np.ndarray) -> np.ndarray:
    """Flat source index of every pixel after one pass of the originals' sequential loop.

    The loop visits (h', w') for h' in range(H−δ, δ, −1), w' likewise, and sets
    x[h', w'] = x[h'+dy, w'+dx] (a read, not a swap). A pixel's value is therefore the original
    value at the end of the chain of reads through pixels visited earlier; the chains are
    resolved for all images at once by pointer jumping (exact for any δ). ``d``: N×P×2 (dx, dy).
    """
    n = d.shape[0]
    hs = np.arange(h - delta, delta, -1)
    ws = np.arange(w - delta, delta, -1)
    pos = (hs[:, None] * w + ws[None, :]).ravel()                          # visit order
    order = np.full(h * w, np.iinfo(np.int64).max, dtype=np.int64)
    order[pos] = np.arange(pos.size)
    ph, pw = np.divmod(pos, w)
    src_of_visited = (ph[None] + d[:, :, 1]) * w + (pw[None] + d[:, :, 0])  # N × P
    g = np.broadcast_to(np.arange(h * w), (n, h * w)).copy()
    g[:, pos] = src_of_visited
    chained = order[g] < order[None, :]          # the read hits a pixel already rewritten
    jump = np.where(chained, g, np.arange(h * w)[None, :])
    while True:
        nxt = np.take_along_axis(jump, jump, axis=1)
        if np.array_equal(nxt, jump):
            break
        jump = nxt
    return np.take_along_axis(g, jump, axis=1)


def _glass_blur(x, params, rngs, pset):
    sigma, delta, iterations = params
    n, h, w, c = x.shape
    img = np.uint8(_blur(x / 255.0, sigma) * 255)
    npos = max(h - 2 * delta, 0) * max(w - 2 * delta, 0)
    d = _draw(rngs, lambda r: r.integers(-delta, delta, size=(iterations, npos, 2)))
    flat = img.reshape(n, h * w, c)
    for it in range(iterations):
        if npos == 0:
            break
        src = _glass_sources(h, w, delta, d[:, it])
        flat = np.take_along_axis(flat, src[:, :, None], axis=1)
    img = flat.reshape(n, h, w, c)
    return np.clip(_blur(img / 255.0, sigma), 0, 1) * 255


def _defocus_kernel(radius: float, alias_sigma: float) -> np.ndarray:
    if radius <= 8:
        grid, ksize = np.arange(-8, 8 + 1), (3, 3)
    else:
        grid, ksize = np.arange(-radius, radius + 1), (5, 5)
    xx, yy = np.meshgrid(grid, grid)
    disk = np.array(xx ** 2 + yy ** 2 <= radius ** 2, dtype=np.float32)
    disk /= disk.sum()
    kernel = cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_sigma)
    # drop the all-zero margin (symmetrically, so the anchor stays the centre): same result
    nz = np.flatnonzero(np.abs(kernel).sum(0) + np.abs(kernel).sum(1))
    m = min(nz[0], kernel.shape[0] - 1 - nz[-1])
    return kernel[m:kernel.shape[0] - m, m:kernel.shape[1] - m]


def _defocus_blur(x, params, rngs, pset):
    kernel = _defocus_kernel(*params)
    n, h, w, c = x.shape
    stacked = (x / 255.0).transpose(1, 2, 0, 3).reshape(h, w, n * c)
    parts = [cv2.filter2D(np.ascontiguousarray(stacked[:, :, i:i + 126]), -1, kernel, borderType=cv2.BORDER_REFLECT_101)
             for i in range(0, n * c, 126)]
    out = np.concatenate([p.reshape(h, w, -1) for p in parts], axis=2)
    return np.clip(out.reshape(h, w, n, c).transpose(2, 0, 1, 3), 0, 1) * 255


def _motion_blur_c(x, params, rngs, pset):
    radius, sigma = params
    angles = np.array([r.uniform(-45, 45) for r in rngs])
    return _motion_blur(x, radius, sigma, angles)


def zoom_factors(stop: float, step: float) -> np.ndarray:
    """The zoom factors of zoom_blur: float ``np.arange(1, stop, step)`` as the originals."""
    return np.arange(1, stop, step)


_ZOOM_OPERATORS: dict[tuple, object] = {}


def _zoom_blur_operator(h: int, w: int, zooms: np.ndarray):
    """Sparse (H·W)×(H·W) operator of zoom blur: (x + Σ_z clipped_zoom(x, z)) / (len(zooms) + 1)."""
    from scipy import sparse

    key = (h, w, tuple(zooms))
    if key not in _ZOOM_OPERATORS:
        def axis(length: int, z: float):
            i0, i1, frac = _zoom_taps(length, z)
            rows = np.arange(length)
            return sparse.csr_matrix((np.concatenate([1 - frac, frac]),
                                      (np.concatenate([rows, rows]), np.concatenate([i0, i1]))),
                                     shape=(length, length))
        total = sparse.identity(h * w, format="csr")
        for z in zooms:
            total = total + (sparse.identity(h * w, format="csr") if z == 1
                             else sparse.kron(axis(h, z), axis(w, z), format="csr"))
        _ZOOM_OPERATORS[key] = (total / (len(zooms) + 1)).tocsr()
    return _ZOOM_OPERATORS[key]


def _zoom_blur(x, params, rngs, pset):
    n, h, w, c = x.shape
    op = _zoom_blur_operator(h, w, zoom_factors(*params))
    flat = np.ascontiguousarray(x.transpose(1, 2, 0, 3)).reshape(h * w, n * c) / 255.0
    out = (op @ flat).reshape(h, w, n, c).transpose(2, 0, 1, 3)
    return np.clip(out, 0, 1) * 255


def _luma_f32(x: np.ndarray) -> np.ndarray:
    """OpenCV RGB2GRAY on float32 RGB: 0.299 R + 0.587 G + 0.114 B."""
    return (x[..., 0] * np.float32(0.299) + x[..., 1] * np.float32(0.587)
            + x[..., 2] * np.float32(0.114))[..., None]


def _snow(x, params, rngs, pset):
    mu, sd, zoom, thr, radius, sigma_m, blend = params
    n, h, w, _ = x.shape
    x = x.astype(np.float32) / 255
    draws = [(r.normal(mu, sd, (h, w)), r.uniform(-135, -45)) for r in rngs]
    layer = np.stack([d[0] for d in draws])[..., None]
    angles = np.array([d[1] for d in draws])
    layer = _clipped_zoom(layer, zoom)
    layer[layer < thr] = 0
    layer = np.uint8(np.clip(layer, 0, 1) * 255)
    layer = _motion_blur(layer, radius, sigma_m, angles).astype(np.float32) / 255
    x = blend * x + (1 - blend) * np.maximum(x, _luma_f32(x) * 1.5 + 0.5)
    return np.clip(x + layer + layer[:, ::-1, ::-1], 0, 1) * 255


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
    return np.clip(a * x.astype(np.float64) + b * np.stack(crops), 0, 255)


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


def _fog(x, params, rngs, pset):
    strength, decay = params
    n, h, w, _ = x.shape
    mapsize = 1 << max(1, int(math.ceil(math.log2(max(h, w)))))
    count = _plasma_draw_count(mapsize)
    maps = plasma_fractal(_draw(rngs, lambda r: r.random(count)), mapsize, decay)
    x = x / 255.0
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + strength * maps[:, :h, :w, None]
    return np.clip(x * max_val / (max_val + strength), 0, 1) * 255


def _brightness(x, delta, rngs, pset):
    def f(hsv):
        hsv[..., 2] = np.clip(hsv[..., 2] + delta, 0, 1)
    return _hsv_apply(x / 255.0, f)


def _saturate(x, params, rngs, pset):
    mul, add = params

    def f(hsv):
        hsv[..., 1] = np.clip(hsv[..., 1] * mul + add, 0, 1)
    return _hsv_apply(x / 255.0, f)


def _contrast(x, c, rngs, pset):
    x = x / 255.0
    means = x.mean(axis=(1, 2), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def _reflect_index(i: np.ndarray, n: int) -> np.ndarray:
    """scipy 'reflect' (d c b a | a b c d | d c b a) for integer indices."""
    i = np.mod(i, 2 * n)
    return np.where(i >= n, 2 * n - 1 - i, i)


def _bilinear_reflect(img: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``map_coordinates(order=1, mode='reflect')`` for a batch N×H×W×C at N×H×W coordinates."""
    n, h, w, c = img.shape
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    base = (np.arange(n) * h)[:, None, None]
    ra, rb = (_reflect_index(r0, h) + base) * w, (_reflect_index(r0 + 1, h) + base) * w
    ca, cb = _reflect_index(c0, w), _reflect_index(c0 + 1, w)
    flat = img.reshape(n * h * w, c)
    out = np.take(flat, ra + ca, axis=0) * ((1 - fr) * (1 - fc))
    out += np.take(flat, ra + cb, axis=0) * ((1 - fr) * fc)
    out += np.take(flat, rb + ca, axis=0) * (fr * (1 - fc))
    out += np.take(flat, rb + cb, axis=0) * (fr * fc)
    return out


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


def _elastic_transform(x, params, rngs, pset):
    n, h, w, _ = x.shape
    s = max(h, w)
    unit = 244 * s / 224 if pset == "in" else s
    alpha, sigma, aff = (p * unit for p in params)
    x = x.astype(np.float32) / 255
    cx, cy, sq = w // 2, h // 2, min(h, w) // 3
    pts1 = np.float32([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]])
    out = np.empty_like(x)
    fields = np.empty((n, 2, h, w))
    for i, r in enumerate(rngs):
        pts2 = pts1 + r.uniform(-aff, aff, size=pts1.shape).astype(np.float32)
        m = cv2.getAffineTransform(pts1, pts2)
        out[i] = cv2.warpAffine(x[i], m, (w, h), borderMode=cv2.BORDER_REFLECT_101)
        fields[i, 0] = r.uniform(-1, 1, size=(h, w))
        fields[i, 1] = r.uniform(-1, 1, size=(h, w))
    if sigma > 0:
        gh, gw = _gaussian_matrix(h, sigma, 3.0), _gaussian_matrix(w, sigma, 3.0)
        fields = gh @ fields @ gw.T
    fields = (fields * alpha).astype(np.float32)
    rows = np.arange(h)[None, :, None] + fields[:, 1]
    cols = np.arange(w)[None, None, :] + fields[:, 0]
    return np.clip(_bilinear_reflect(out, rows, cols), 0, 1) * 255


def _pixelate(x, f, rngs, pset):
    n, h, w, _ = x.shape
    small = (int(w * f), int(h * f))
    return _per_image(x, lambda im: np.asarray(
        Image.fromarray(im).resize(small, Image.BOX).resize((w, h), Image.BOX)))


def _jpeg(x, quality, rngs, pset):
    def f(im):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=quality)
        buf.seek(0)
        return np.asarray(Image.open(buf).convert("RGB"))
    return _per_image(x, f)


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


_FUNCS: dict[str, Callable] = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur, "glass_blur": _glass_blur, "motion_blur": _motion_blur_c,
    "zoom_blur": _zoom_blur, "snow": _snow, "frost": _frost, "fog": _fog, "brightness": _brightness,
    "contrast": _contrast, "elastic_transform": _elastic_transform, "pixelate": _pixelate,
    "jpeg_compression": _jpeg, "speckle_noise": _speckle_noise, "gaussian_blur": _gaussian_blur,
    "spatter": _spatter, "saturate": _saturate,
}


def _luma_u8(rgb: np.ndarray) -> np.ndarray:
    """OpenCV RGB2GRAY (uint8 luma) of N×H×W×3 images → N×H×W."""
    n, h, w, _ = rgb.shape
    return cv2.cvtColor(np.ascontiguousarray(rgb).reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(n, h, w)


def corrupt(images: np.ndarray, corruption: str, severity: int, seed: int = 0, *,
            first_index: int = 0) -> np.ndarray:
    """Corrupt a batch of uint8 images (N×H×W×C with C ∈ {1, 3}, or N×H×W) like the "-C" sets.

    Parameters come from the CIFAR, Tiny-ImageNet or ImageNet set by S = max(H, W) (spec §2).
    Image k of the batch draws from ``default_rng([seed, corruption index, severity,
    first_index + k])``: the same bytes for any batch split (pass ``first_index`` when you feed
    a dataset in pieces). Grey images are corrupted as RGB and returned as luma. Results are
    truncated to uint8 like the originals. Returns an array of the input's shape.
    """
    _check_corruption(corruption)
    severity = _check_severity(severity)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer ≥ 0, got {seed!r}")
    if isinstance(first_index, bool) or not isinstance(first_index, (int, np.integer)) or first_index < 0:
        raise ValueError(f"first_index must be an integer ≥ 0, got {first_index!r}")
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0..255), got dtype {arr.dtype}; convert float images "
                         "in [0, 1] with np.round(x * 255).astype(np.uint8)")
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (1, 3)):
        raise ValueError(f"images must have shape N×H×W×C with C in {{1, 3}} (or N×H×W for grey), "
                         f"got {arr.shape}; move channels last with x.transpose(0, 2, 3, 1)")
    n, h, w = arr.shape[:3]
    if h < 4 or w < 4:
        raise ValueError(f"images must be at least 4×4 pixels, got {h}×{w}")
    grey = arr.ndim == 3 or arr.shape[-1] == 1
    rgb = np.repeat(arr.reshape(n, h, w, 1), 3, axis=-1) if grey else arr
    pset = parameter_set(h, w)
    params = PARAMS[corruption][pset][severity - 1]
    fn = _FUNCS[corruption]
    cidx = CORRUPTIONS.index(corruption)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    chunk = max(1, (1 << 20) // (h * w))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        rngs = [] if corruption in DETERMINISTIC else [
            np.random.default_rng([int(seed), cidx, severity, int(first_index) + i])
            for i in range(start, stop)]
        y = fn(np.ascontiguousarray(rgb[start:stop]), params, rngs, pset)
        if y.dtype != np.uint8:
            y = np.clip(np.nan_to_num(y, nan=0.0), 0, 255).astype(np.uint8)   # truncation
        out[start:stop] = y
    if grey:
        return _luma_u8(out).reshape(arr.shape)
    return out
