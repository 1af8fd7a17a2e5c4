"""The corruption generator: names, published parameters, and :func:`corrupt` (spec §2–§4)."""

from __future__ import annotations

import hashlib
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
#: Bumped whenever the bytes ``corrupt`` returns change (2: shot_noise samples by inverting the
#: exact output-level distribution); sets written by another version are regenerated.
GENERATOR_VERSION = 2


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


# --------------------------------------------------------------------------- per-image generators
# ``np.random.default_rng([seed, corruption, severity, index])`` costs ~10 µs (SeedSequence hashing
# and PCG64 seeding in Python-level loops), more than some corruptions take per image. The same
# generator states are computed here for a whole batch at once — NumPy's SeedSequence hash on
# uint32 arrays, then PCG64's seeding step on Python ints — and loaded into one reused Generator.
# NumPy keeps both algorithms stream-stable; tests check the states against default_rng.
_SS_INIT_A, _SS_MULT_A, _SS_INIT_B, _SS_MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_SS_MIX_L, _SS_MIX_R, _M32 = 0xCA01F9DD, 0x4973F715, 0xFFFFFFFF
_PCG_MULT, _M128 = 0x2360ED051FC65DA44385DF649FCCF645, (1 << 128) - 1


def _pcg64_states(words: np.ndarray) -> list[tuple[int, int]]:
    """(state, inc) of ``PCG64(SeedSequence(entropy))`` for each column of ``words`` (4×N, every
    entry < 2**32, so each is one uint32 entropy word). Vectorised SeedSequence: pool size 4."""
    words = np.asarray(words, dtype=np.uint64)
    m32, s16 = np.uint64(_M32), np.uint64(16)
    consts = [_SS_INIT_A]
    for _ in range(16):
        consts.append((consts[-1] * _SS_MULT_A) & _M32)
    it = iter(range(16))

    def hashmix(v):
        i = next(it)
        v = ((v ^ np.uint64(consts[i])) * np.uint64(consts[i + 1])) & m32
        return v ^ (v >> s16)

    def mix(a, b):
        r = (np.uint64(_SS_MIX_L) * a - np.uint64(_SS_MIX_R) * b) & m32
        return r ^ (r >> s16)

    pool = [hashmix(words[i]) for i in range(4)]
    for src in range(4):
        for dst in range(4):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    out, hb = [], _SS_INIT_B
    for i in range(8):                                   # generate_state(4, uint64)
        v = pool[i % 4] ^ np.uint64(hb)
        hb = (hb * _SS_MULT_B) & _M32
        v = (v * np.uint64(hb)) & m32
        out.append(v ^ (v >> s16))
    w = [(out[2 * j] | (out[2 * j + 1] << np.uint64(32))).tolist() for j in range(4)]
    states = []
    for s0, s1, i0, i1 in zip(*w):                     # pcg64_set_seed: srandom_r(state, initseq)
        inc = ((((i0 << 64) | i1) << 1) | 1) & _M128
        states.append((((inc + ((s0 << 64) | s1)) * _PCG_MULT + inc) & _M128, inc))
    return states


class _ImageStreams:
    """The generators ``default_rng([seed, cidx, severity, first + k])``, k = 0..count−1, in order.

    Iterating yields ONE reused Generator, re-seeded before each image: use each before taking
    the next (every corruption draws image by image). Falls back to ``default_rng`` when an
    entropy word does not fit 32 bits (a seed or index ≥ 2**32)."""

    def __init__(self, seed: int, cidx: int, severity: int, first: int, count: int):
        self.entropy = (int(seed), int(cidx), int(severity))
        self.first, self.count = int(first), int(count)

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        seed, cidx, sev = self.entropy
        last = self.first + self.count - 1
        if max(seed, last) >= 1 << 32:
            for k in range(self.count):
                yield np.random.default_rng([seed, cidx, sev, self.first + k])
            return
        idx = np.arange(self.first, self.first + self.count, dtype=np.uint64)
        words = np.stack([np.full_like(idx, seed), np.full_like(idx, cidx), np.full_like(idx, sev), idx])
        bitgen = np.random.PCG64(0)
        gen = np.random.Generator(bitgen)
        for state, inc in _pcg64_states(words):
            bitgen.state = {"bit_generator": "PCG64", "state": {"state": state, "inc": inc},
                            "has_uint32": 0, "uinteger": 0}
            yield gen


def _blocks(n: int, h: int, w: int, elements: int = 16384):
    """Slices of the batch of about ``elements`` pixels each: elementwise float work on blocks
    that stay in cache instead of on whole-batch temporaries."""
    step = max(1, elements // max(1, h * w))
    return [slice(a, min(n, a + step)) for a in range(0, n, step)]


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

    The plain reference of :func:`_hsv_edit` (which brightness and saturate use; the tests check
    both give the same bytes)."""
    hsv = _rgb_to_hsv(x)
    fn(hsv)
    return np.clip(_hsv_to_rgb(hsv), 0, 1) * 255


def _per_image(x_u8: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.stack([fn(im) for im in x_u8])


# --------------------------------------------------------------------------- the corruptions
# Each takes (x_u8 N×H×W×3 uint8, params, rngs, pset) and returns uint8 (or float in [0, 255]).
# Random draws happen image by image in the originals' order; the arithmetic after them runs on
# cache-sized blocks of the batch, with the originals' dtypes and operation order, so the uint8
# results are the same as whole-batch arithmetic would give.
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
    out = np.empty(x.shape, np.uint8)
    for sl in _blocks(n, h, w, 65536 // c):               # pixels × (images·channels) per block
        m = sl.stop - sl.start
        flat = x[sl].transpose(1, 2, 0, 3).reshape(h * w, m * c) / 255.0
        y = op @ flat
        np.clip(y, 0, 1, out=y)
        y *= 255
        out[sl] = y.reshape(h, w, m, c).transpose(2, 0, 1, 3)
    return out


def _luma_f32(x: np.ndarray) -> np.ndarray:
    """OpenCV RGB2GRAY on float32 RGB: 0.299 R + 0.587 G + 0.114 B."""
    return (x[..., 0] * np.float32(0.299) + x[..., 1] * np.float32(0.587)
            + x[..., 2] * np.float32(0.114))[..., None]


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


_HSV_BLOCK = 16384
# candidate (0 v, 1 q, 2 p, 3 t) of R, G, B per hue sector 0..6 (6 = ⌊6h⌋ rounding up to 6: sector 0)
_RGB_CAND = np.array([[0, 1, 2, 2, 3, 0, 0], [3, 0, 0, 1, 2, 2, 3], [2, 2, 3, 0, 0, 1, 2]], np.intp)


def _hsv_edit(x: np.ndarray, brightness: float | None = None, saturation: tuple | None = None) -> np.ndarray:
    """uint8 RGB → skimage HSV (float64) → V + brightness or S·mul + add, clipped to [0, 1] →
    RGB, clipped, ×255, truncated to uint8. The same float64 values as :func:`_rgb_to_hsv` /
    :func:`_hsv_to_rgb` (bit-identical for all 2²⁴ colours, checked), on blocks of pixels: the
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


def _brightness(x, delta, rngs, pset):
    return _hsv_edit(x, brightness=delta)


def _saturate(x, params, rngs, pset):
    return _hsv_edit(x, saturation=params)


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


def _pixelate(x, f, rngs, pset):
    n, h, w, _ = x.shape
    small = (int(w * f), int(h * f))
    return _per_image(x, lambda im: np.asarray(
        Image.fromarray(im).resize(small, Image.BOX).resize((w, h), Image.BOX)))


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


_MAY_BE_NAN = frozenset({"spatter"})


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
        rngs = () if corruption in DETERMINISTIC else _ImageStreams(seed, cidx, severity,
                                                                     int(first_index) + start, stop - start)
        y = fn(np.ascontiguousarray(rgb[start:stop]), params, rngs, pset)
        if y.dtype != np.uint8:
            if corruption in _MAY_BE_NAN:
                y = np.nan_to_num(y, nan=0.0)
            y = np.clip(y, 0, 255, out=y if y.flags.writeable else None)
        out[start:stop] = y                                    # float → uint8 truncates
    if grey:
        return _luma_u8(out).reshape(arr.shape)
    return out
