"""The corruption registry: every corruption is registered once, beside its function, with its
name, family, seeding index and published parameters per image size; every list of names
(benchmark, extra, groups, deterministic, monotone) is derived from it (spec §2)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

#: The four families of Hendrycks & Dietterich's benchmark.
FAMILIES = ("noise", "blur", "weather", "digital")
#: Parameter sets by image size S = max(H, W): CIFAR (S ≤ 32), Tiny-ImageNet (S ≤ 64), ImageNet.
SIZES = ("cifar", "tin", "in")
SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Corruption:
    """One corruption: ``apply(x_u8 N×H×W×3, params, rngs, size) -> uint8 or float in [0, 255]``.

    ``index``: its position in the canonical order, part of every image's seed (never change it);
    ``params``: size → the five per-severity parameters; ``benchmark``: one of the 15 benchmark
    corruptions (else one of the 4 "extra" validation ones); ``deterministic``: draws no random
    numbers; ``monotone``: spec §5 lists its mean change as strictly increasing with severity;
    ``may_be_nan``: its float result can hold NaN (mapped to 0)."""

    name: str
    family: str
    index: int
    params: dict[str, tuple] = field(repr=False)
    apply: Callable = field(repr=False)
    benchmark: bool = True
    deterministic: bool = False
    monotone: bool = False
    may_be_nan: bool = False

    @property
    def group(self) -> str:
        """The family for benchmark corruptions, ``"extra"`` for the four validation ones."""
        return self.family if self.benchmark else "extra"


REGISTRY: dict[str, Corruption] = {}


def register(name: str, family: str, index: int, params: dict[str, list], *, benchmark: bool = True,
             deterministic: bool = False, monotone: bool = False, may_be_nan: bool = False):
    """Decorator registering ``apply`` as corruption ``name`` (see :class:`Corruption`)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if set(params) != set(SIZES) or any(len(p) != len(SEVERITIES) for p in params.values()):
        raise ValueError(f"{name}: params needs five severities for each of {SIZES}")

    def deco(apply: Callable) -> Callable:
        if name in REGISTRY or any(c.index == index for c in REGISTRY.values()):
            raise ValueError(f"corruption {name!r} or index {index} registered twice")
        REGISTRY[name] = Corruption(name, family, index, {k: tuple(v) for k, v in params.items()}, apply,
                                    benchmark, deterministic, monotone, may_be_nan)
        return apply
    return deco
