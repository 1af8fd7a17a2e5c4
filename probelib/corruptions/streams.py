"""Per-image random streams: ``default_rng([seed, corruption index, severity, image index])``
for a whole batch at once."""

from __future__ import annotations

import numpy as np

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
