"""Numeric helpers the corruptions share: scipy-exact Gaussian passes, clipped-zoom taps,
ImageMagick motion blur, and cache-sized blocks of a batch with their per-image draws."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage


def _blur(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """skimage ``gaussian`` per image (and per channel) over the batch axis 0: sigma on H, W only."""
    if mode == "nearest" and x.dtype == np.float64 and x.ndim >= 3:
        return _gauss_nearest(x, sigma, truncate)
    sig = [0.0, sigma, sigma] + [0.0] * (x.ndim - 3)
    return ndimage.gaussian_filter(x, sig, mode=mode, truncate=truncate)


def _gauss_kernel(sigma: float, truncate: float = 4.0) -> tuple[int, np.ndarray]:
    """scipy's ``_gaussian_kernel1d`` (order 0): radius ⌊truncate·σ + ½⌋ and the weights."""
    radius = _gauss_radius(sigma, truncate)
    xx = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * xx ** 2)
    return radius, phi / phi.sum()


def _gauss_pass(x: np.ndarray, axis: int, radius: int, weights: np.ndarray) -> np.ndarray:
    """scipy ``correlate1d`` (symmetric kernel, mode 'nearest') along ``axis``, bit for bit:
    y = x·w₀ + Σ_{j = r..1} (x₋ⱼ + x₊ⱼ)·wⱼ, accumulated in that order in float64."""
    length = x.shape[axis]
    lo = [slice(None)] * x.ndim
    lo[axis] = slice(0, 1)
    hi = list(lo)
    hi[axis] = slice(length - 1, length)
    padded = np.concatenate([x[tuple(lo)]] * radius + [x] + [x[tuple(hi)]] * radius, axis=axis)

    def shifted(o):
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(radius + o, radius + o + length)
        return padded[tuple(sl)]

    y = np.multiply(shifted(0), weights[radius])
    t = np.empty_like(y)
    for j in range(radius, 0, -1):
        np.add(shifted(-j), shifted(j), out=t)
        t *= weights[radius - j]
        y += t
    return y


def _gauss_nearest(x: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """``ndimage.gaussian_filter(x, (0, σ, σ, 0…), mode='nearest', truncate)`` of a float64 batch,
    bit-identical (same float64 operations in the same order; axis 1 then axis 2), computed on
    cache-sized blocks of images. Radius 0 (σ < 1/8 at truncate 4) is the identity."""
    radius, weights = _gauss_kernel(sigma, truncate)
    if radius == 0:
        return x.copy()
    out = np.empty_like(x)
    n, h, w = x.shape[:3]
    for sl in _blocks(n, h, w, 131072 // max(1, int(np.prod(x.shape[3:])))):
        out[sl] = _gauss_pass(_gauss_pass(x[sl], 1, radius, weights), 2, radius, weights)
    return out


def _gauss_radius(sigma: float, truncate: float = 4.0) -> int:
    """scipy's ``gaussian_filter`` kernel radius; 0 means the filter is the identity."""
    return int(truncate * float(sigma) + 0.5)


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


def _motion_taps(radius: float, sigma: float, angles_deg: np.ndarray):
    """ImageMagick's motion-blur kernel: weights w_i ∝ exp(−i²/2σ²), i < 2⌈radius⌉+1, and tap
    offsets (⌈i·sinθ−½⌉, ⌈i·cosθ−½⌉) per image (N × width each)."""
    width = 2 * int(math.ceil(radius)) + 1
    i = np.arange(width, dtype=np.float64)
    weights = np.exp(-i ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    theta = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))[:, None]
    dy = np.ceil(i[None] * np.sin(theta) - 0.5).astype(np.int64)   # N × width
    dx = np.ceil(i[None] * np.cos(theta) - 0.5).astype(np.int64)
    return weights, dy, dx


def _motion_blur(img: np.ndarray, radius: float, sigma: float, angles_deg: np.ndarray) -> np.ndarray:
    """ImageMagick ``MotionBlurImage`` on uint8 images N×H×W×C, one angle per image (spec §3):
    width 2⌈radius⌉+1, weights ∝ exp(−i²/2σ²), taps at (⌈i·sinθ−½⌉, ⌈i·cosθ−½⌉), edge
    replication, Q16 quantisation ⌊round(257·f)/257⌋ of f = Σ_i w_i·in_i. Returns uint8.

    Exact and fast: f is accumulated in float32 (images sorted by angle, so the images sharing a
    tap offset are a contiguous run: plain slices), which is within (width+1)·255·2⁻²⁴ of the
    float64 sum; the quantised level is then ⌊f + 1/514⌋ for every pixel farther than twice that
    from a level edge, and the few others are recomputed with the float64 sum in tap order."""
    n, h, w, c = img.shape
    weights, dy, dx = _motion_taps(radius, sigma, angles_deg)
    width = len(weights)
    w32 = weights.astype(np.float32)
    margin = 2 * (width + 2) * 256 * 2.0 ** -24
    pad = int(max(np.abs(dy).max(), np.abs(dx).max())) if n else 0
    order = np.argsort(np.asarray(angles_deg, dtype=np.float64), kind="stable")
    out = np.empty(img.shape, np.uint8)
    step = max(1, 131072 // (h * w * c))
    acc = np.empty((min(step, n), h, w, c), np.float32)
    tmp = np.empty_like(acc)
    for a in range(0, n, step):
        idx = order[a:a + step]
        m = len(idx)
        pu8 = np.pad(img[idx], ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")  # edge replication
        p32 = pu8.astype(np.float32)
        bdy, bdx = dy[idx], dx[idx]
        A, T = acc[:m], tmp[:m]
        np.multiply(p32[:, pad:pad + h, pad:pad + w], w32[0], out=A)      # tap 0 is (0, 0)
        for k in range(1, width):
            key = bdy[:, k] * (4 * pad + 3) + bdx[:, k]
            starts = np.concatenate([[0], np.flatnonzero(key[1:] != key[:-1]) + 1, [m]])
            for s, e in zip(starts[:-1], starts[1:]):
                oy, ox = pad + bdy[s, k], pad + bdx[s, k]
                np.multiply(p32[s:e, oy:oy + h, ox:ox + w], w32[k], out=T[s:e])
                A[s:e] += T[s:e]
        z = A.astype(np.float64)
        z += 1 / 514
        level = np.floor(z)
        z -= level
        near = np.flatnonzero((z < margin) | (z > 1 - margin))
        np.clip(level, 0, 255, out=level)
        block = level.astype(np.uint8)
        if near.size:                                      # exact: the float64 sum in tap order
            bi, yy, xx, cc = np.unravel_index(near, A.shape)
            f = np.zeros(near.size)
            for k in range(width):
                f += weights[k] * pu8[bi, pad + yy + bdy[bi, k], pad + xx + bdx[bi, k], cc]
            block.reshape(-1)[near] = np.floor(np.rint(257.0 * f) / 257.0).clip(0, 255).astype(np.uint8)
        out[idx] = block
    return out


def _draw(rngs: Sequence[np.random.Generator], fn: Callable[[np.random.Generator], np.ndarray]):
    return np.stack([fn(r) for r in rngs])


def _blocks(n: int, h: int, w: int, elements: int = 16384):
    """Slices of the batch of about ``elements`` pixels each: elementwise float work on blocks
    that stay in cache instead of on whole-batch temporaries."""
    step = max(1, elements // max(1, h * w))
    return [slice(a, min(n, a + step)) for a in range(0, n, step)]


def _per_image(x_u8: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.stack([fn(im) for im in x_u8])


def _draw_blocks(x, rngs, shape, dtype, draw):
    """Yield (block slice, the block's draws): ``draw(generator, out)`` fills image k's ``shape``
    array from generator k, block by block (the buffer is reused: consume it before the next)."""
    n, h, w = x.shape[:3]
    streams = iter(rngs)
    blocks = _blocks(n, h, w)
    buf = np.empty((blocks[0].stop - blocks[0].start if blocks else 0,) + tuple(shape), dtype)
    for sl in blocks:
        part = buf[:sl.stop - sl.start]
        for row in part:
            draw(next(streams), row)
        yield sl, part
