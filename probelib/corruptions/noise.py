"""Noise corruptions: gaussian, shot (Poisson), impulse (salt and pepper), speckle."""

from __future__ import annotations

import math

import numpy as np

from probelib.corruptions._kernels import _draw_blocks
from probelib.corruptions.registry import register


@register("gaussian_noise", "noise", 0, {"cifar": [0.04, 0.06, 0.08, 0.09, 0.1],
                                         "tin": [0.04, 0.08, 0.12, 0.15, 0.18],
                                         "in": [0.08, 0.12, 0.18, 0.26, 0.38]}, monotone=True)
def _gaussian_noise(x, sigma, rngs, pset):
    out = np.empty(x.shape, np.uint8)
    for sl, noise in _draw_blocks(x, rngs, x.shape[1:], np.float32,
                                     lambda r, o: r.standard_normal(dtype=np.float32, out=o)):
        noise *= np.float32(sigma)
        noise += x[sl].astype(np.float32) / np.float32(255)
        np.clip(noise, 0, 1, out=noise)
        noise *= np.float32(255)
        out[sl] = noise                                   # truncation, like np.uint8(float)
    return out


@register("speckle_noise", "noise", 15, {"cifar": [0.06, 0.1, 0.12, 0.16, 0.2],
                                         "tin": [0.15, 0.2, 0.25, 0.3, 0.35],
                                         "in": [0.15, 0.2, 0.35, 0.45, 0.6]}, benchmark=False, monotone=True)
def _speckle_noise(x, sigma, rngs, pset):
    out = np.empty(x.shape, np.uint8)
    for sl, noise in _draw_blocks(x, rngs, x.shape[1:], np.float32,
                                     lambda r, o: r.standard_normal(dtype=np.float32, out=o)):
        xf = x[sl].astype(np.float32) / np.float32(255)
        noise *= np.float32(sigma)
        noise *= xf
        noise += xf
        np.clip(noise, 0, 1, out=noise)
        noise *= np.float32(255)
        out[sl] = noise
    return out


# shot noise: Poisson(x·c)/c, clipped and truncated, takes one of 256 levels, so per input level v
# the output level has a fixed distribution: P(out ≤ j | v) = P(Poisson(λ_v) ≤ k_j) with λ_v the
# originals' (v / 255)·c and k_j the largest count that truncates to level ≤ j. The level is drawn
# by inverting that CDF at one uniform per element (r.random, 53-bit): the same distribution as
# r.poisson followed by the originals' arithmetic, not an approximation of Poisson (the CDF comes
# from the exact pmf in float64, within 1e-12 of scipy.stats.poisson), at a fraction of PTRS's
# cost. The bytes differ from drawing r.poisson (another use of the stream), the distribution
# does not. A guide table of 2**12 buckets per v gives the level with one comparison for all but
# ~1 % of elements, which a binary search over the 256 levels settles.
_SHOT_GUIDE_BITS = 12
_SHOT_TABLES: dict[float, tuple[np.ndarray, np.ndarray]] = {}


def _shot_tables(c: float) -> tuple[np.ndarray, np.ndarray]:
    """(cdf 256×256 float64 of the output level per input level, guide 256×2**12 uint8)."""
    key = float(c)
    if key in _SHOT_TABLES:
        return _SHOT_TABLES[key]
    from scipy.special import gammaln

    lam = (np.arange(256) / 255.0) * c                        # as x / 255.0 * c in the originals
    top = int(math.ceil(c))                                   # counts ≥ c give level 255
    k = np.arange(top + 1)
    level = (np.clip(k / c, 0, 1) * 255).astype(np.uint8)     # the originals' level of count k
    with np.errstate(divide="ignore", invalid="ignore"):
        logpmf = k[None, :top] * np.log(lam[:, None]) - lam[:, None] - gammaln(k[None, :top] + 1)
    logpmf[0] = -np.inf                                       # λ = 0: all mass at count 0
    logpmf[0, 0] = 0.0
    cdf_k = np.cumsum(np.exp(logpmf), axis=1)                 # P(count ≤ k), k < top
    last = np.searchsorted(level[:top], np.arange(256), side="right") - 1
    cdf = cdf_k[:, last]
    cdf[:, 255] = 2.0                                         # level 255: everything left (u < 1)
    g = 1 << _SHOT_GUIDE_BITS
    # guide[v, b] = #{j : cdf[v, j] ≤ b / g}: the level at the bucket's lower edge (exact: g = 2**k)
    edge = np.minimum(np.ceil(cdf * g), g).astype(np.int64)
    counts = np.bincount((edge + (g + 1) * np.arange(256)[:, None]).ravel(), minlength=256 * (g + 1))
    guide = np.cumsum(counts.reshape(256, g + 1), axis=1)[:, :g].astype(np.uint8)
    _SHOT_TABLES[key] = (np.ascontiguousarray(cdf).ravel(), guide.ravel())
    return _SHOT_TABLES[key]


@register("shot_noise", "noise", 1, {"cifar": [500, 250, 100, 75, 50],
                                     "tin": [250, 100, 50, 30, 15],
                                     "in": [60, 25, 12, 5, 3]}, monotone=True)
def _shot_noise(x, c, rngs, pset):
    cdf, guide = _shot_tables(c)
    out = np.empty(x.shape, np.uint8)
    flat = out.reshape(-1)
    per_image = flat.size // max(1, len(x))
    pending, pending_u = [], []
    for sl, u in _draw_blocks(x, rngs, x.shape[1:], np.float64, lambda r, o: r.random(out=o)):
        u = u.reshape(-1)
        v = x[sl].reshape(-1).astype(np.intp)
        level = guide[(v << _SHOT_GUIDE_BITS) | (u * (1 << _SHOT_GUIDE_BITS)).astype(np.intp)]
        v <<= 8
        v += level
        above = np.flatnonzero(cdf[v] <= u)                  # the level is above the bucket's
        start = sl.start * per_image
        flat[start:start + level.size] = level
        if above.size:
            pending.append(above + start)
            pending_u.append(u[above])
    if pending:                  # binary search for the first level whose CDF exceeds u (≤ 8 steps)
        idx, u = np.concatenate(pending), np.concatenate(pending_u)
        row = x.reshape(-1)[idx].astype(np.intp) << 8
        lo = flat[idx].astype(np.intp) + 1
        hi = np.full_like(lo, 255)                           # cdf[v, 255] = 2 > u
        while (lo < hi).any():
            mid = (lo + hi) >> 1
            left = cdf[row + mid] > u
            hi = np.where(left, mid, hi)
            lo = np.where(left, lo, mid + 1)
        flat[idx] = lo
    return out


@register("impulse_noise", "noise", 2, {"cifar": [0.01, 0.02, 0.03, 0.05, 0.07],
                                        "tin": [0.01, 0.02, 0.05, 0.08, 0.14],
                                        "in": [0.03, 0.06, 0.09, 0.17, 0.27]}, monotone=True)
def _impulse_noise(x, amount, rngs, pset):
    # per element: flipped ~ Bernoulli(amount), then salt ~ Bernoulli(½) → 255 else 0 (two
    # r.random(shape) draws per image, as skimage's random_noise(mode="s&p") with rng=r);
    # unflipped elements keep their value ((v / 255) · 255 truncates back to v for every v)
    out = np.empty(x.shape, np.uint8)
    for sl, u in _draw_blocks(x, rngs, (2,) + x.shape[1:], np.float64, lambda r, o: r.random(out=o)):
        flipped = u[:, 0] <= amount
        salt = (u[:, 1] <= 0.5).view(np.uint8) * np.uint8(255)
        out[sl] = np.where(flipped, salt, x[sl])
    return out
