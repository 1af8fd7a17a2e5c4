"""Blur corruptions: gaussian, glass, defocus, motion, zoom."""

from __future__ import annotations

import cv2
import numpy as np

from probelib.corruptions._kernels import _blocks, _blur, _gauss_kernel, _gauss_pass, _motion_blur, _zoom_taps
from probelib.corruptions.registry import register


@register("gaussian_blur", "blur", 16, {"cifar": [0.4, 0.6, 0.7, 0.8, 1],
                                        "tin": [0.5, 0.75, 1, 1.25, 1.5],
                                        "in": [1, 2, 3, 4, 6]}, benchmark=False, deterministic=True, monotone=True)
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
    nh, nw = h - 2 * delta, w - 2 * delta
    g = np.tile(np.arange(h * w), (n, 1))
    # visited pixel k (rows h−δ..δ+1, then columns w−δ..δ+1, both descending) reads pixel
    # k + dy·W + dx: add the offsets on the interior window, flipped to ascending order
    g.reshape(n, h, w)[:, delta + 1:h - delta + 1, delta + 1:w - delta + 1] += \
        (d[:, :, 1] * w + d[:, :, 0]).reshape(n, nh, nw)[:, ::-1, ::-1]
    if delta == 1:        # offsets in {−1, 0}: every read hits a pixel not yet visited (or itself)
        return g
    hs = np.arange(h - delta, delta, -1)
    ws = np.arange(w - delta, delta, -1)
    pos = (hs[:, None] * w + ws[None, :]).ravel()                          # visit order
    order = np.full(h * w, np.iinfo(np.int64).max, dtype=np.int64)
    order[pos] = np.arange(pos.size)
    chained = order[g] < order[None, :]          # the read hits a pixel already rewritten
    jump = np.where(chained, g, np.arange(h * w)[None, :])
    while True:
        nxt = np.take_along_axis(jump, jump, axis=1)
        if np.array_equal(nxt, jump):
            break
        jump = nxt
    return np.take_along_axis(g, jump, axis=1)


@register("glass_blur", "blur", 4, {"cifar": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2),
                                              (0.4, 1, 2)],
                                    "tin": [(0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)],
                                    "in": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)]})
def _glass_blur(x, params, rngs, pset):
    sigma, delta, iterations = params
    n, h, w, c = x.shape
    radius, weights = _gauss_kernel(sigma)
    blocks = _blocks(n, h, w, 131072 // c)

    def blur(xb):                 # skimage gaussian (mode nearest) of xb / 255, as _gauss_nearest
        xb = xb / 255.0
        return _gauss_pass(_gauss_pass(xb, 1, radius, weights), 2, radius, weights) if radius else xb

    img = np.empty(x.shape, np.uint8)
    for sl in blocks:
        b = blur(x[sl])
        b *= 255
        img[sl] = b               # np.uint8(float): truncation (no clip in the originals here)
    npos = max(h - 2 * delta, 0) * max(w - 2 * delta, 0)
    if npos:
        d = np.empty((n, iterations, npos, 2), np.int64)
        for r, row in zip(rngs, d):
            row[...] = r.integers(-delta, delta, size=(iterations, npos, 2))
        flat = img.reshape(n * h * w, c)
        base = (np.arange(n) * (h * w))[:, None]
        for it in range(iterations):
            src = _glass_sources(h, w, delta, d[:, it])
            src += base
            flat = np.take(flat, src.reshape(-1), axis=0)
        img = flat.reshape(n, h, w, c)
    out = np.empty(x.shape, np.uint8)
    for sl in blocks:
        b = blur(img[sl])
        np.clip(b, 0, 1, out=b)
        b *= 255
        out[sl] = b
    return out


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


@register("defocus_blur", "blur", 3, {"cifar": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
                                      "tin": [(0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)],
                                      "in": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)]},
          deterministic=True, monotone=True)
def _defocus_blur(x, params, rngs, pset):
    kernel = _defocus_kernel(*params)
    n, h, w, c = x.shape
    ky, kx = kernel.shape[0] // 2, kernel.shape[1] // 2
    if kernel.size < 50:
        # direct (non-DFT) filter2D: every output pixel is the same sum of products however the
        # images are laid out, so filter cache-sized stacks of images padded (reflect-101) one
        # above the other, instead of transposing the whole batch into channels
        out = np.empty(x.shape, np.uint8)
        for sl in _blocks(n, h, w, 65536 // c):
            m = sl.stop - sl.start
            xb = np.pad(x[sl] / 255.0, ((0, 0), (ky, ky), (kx, kx), (0, 0)), mode="reflect")
            f = cv2.filter2D(xb.reshape(m * (h + 2 * ky), w + 2 * kx, c), -1, kernel,
                             borderType=cv2.BORDER_REFLECT_101)
            f = f.reshape(m, h + 2 * ky, w + 2 * kx, c)[:, ky:ky + h, kx:kx + w]
            np.clip(f, 0, 1, out=f)
            f *= 255
            out[sl] = f
        return out
    stacked = (x / 255.0).transpose(1, 2, 0, 3).reshape(h, w, n * c)
    parts = [cv2.filter2D(np.ascontiguousarray(stacked[:, :, i:i + 126]), -1, kernel, borderType=cv2.BORDER_REFLECT_101)
             for i in range(0, n * c, 126)]
    out = np.concatenate([p.reshape(h, w, -1) for p in parts], axis=2)
    return np.clip(out.reshape(h, w, n, c).transpose(2, 0, 1, 3), 0, 1) * 255


@register("motion_blur", "blur", 5, {"cifar": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
                                     "tin": [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)],
                                     "in": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)]})
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


@register("zoom_blur", "blur", 6, {"cifar": [(1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01),
                                             (1.26, 0.01)],
                                   "tin": [(1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01),
                                           (1.26, 0.01)],
                                   "in": [(1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02),
                                          (1.31, 0.03)]}, deterministic=True, monotone=True)
def _zoom_blur(x, params, rngs, pset):
    n, h, w, c = x.shape
    op = _zoom_blur_operator(h, w, zoom_factors(*params))
    out = np.empty(x.shape, np.uint8)
    for sl in _blocks(n, h, w, 65536 // c):               # pixels × (images·channels) per block
        m = sl.stop - sl.start
        flat = x[sl].transpose(1, 2, 0, 3).reshape(h * w, m * c) / 255.0
        y = op @ flat
        np.clip(y, 0, 1, out=y)
        y *= 255
        out[sl] = y.reshape(h, w, m, c).transpose(2, 0, 1, 3)
    return out
