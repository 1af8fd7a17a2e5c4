"""Record the corruption generator's outputs into tests/corruption_outputs.npz.

``tests/test_corruptions.py::test_outputs_match_the_recorded_generator`` compares the current
generator with these arrays, within a stated tolerance (see that test). Regenerate only when the
generator's output is meant to change (and bump ``GENERATOR_VERSION`` in probelib/corruptions/generator.py then)::

    python tests/make_corruption_fixture.py            # refuses if the fixture exists
    python tests/make_corruption_fixture.py --force    # overwrite it on purpose

The inputs are stored in the fixture too, so the comparison does not depend on numpy's
``integers`` stream; they are drawn from ``default_rng(1234)`` in four kinds: grey, CIFAR-,
Tiny-ImageNet- and ImageNet-sized (several corruptions pick their parameters by size), and every
corruption × severity 1..5 is applied with ``seed=7, first_index=5``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "corruption_outputs.npz"
SEED, FIRST_INDEX = 7, 5


def fixture_inputs() -> dict[str, np.ndarray]:
    """The four input kinds of the recorded outputs (uint8, N×H×W×C or N×H×W for grey)."""
    rng = np.random.default_rng(1234)
    return {"cifar_rgb": rng.integers(0, 256, (3, 12, 14, 3), dtype=np.uint8),
            "cifar_grey": rng.integers(0, 256, (2, 16, 16), dtype=np.uint8),
            "tin_rgb": rng.integers(0, 256, (1, 40, 36, 3), dtype=np.uint8),
            "in_rgb": rng.integers(0, 256, (1, 66, 70, 3), dtype=np.uint8)}


def record() -> dict[str, np.ndarray]:
    """Every output, keyed ``out/<input>/<corruption>/<severity>``, plus ``in/<input>`` and versions."""
    import cv2

    from probelib.corruptions import CORRUPTIONS, corrupt
    from probelib.corruptions.generator import GENERATOR_VERSION

    arrays: dict[str, np.ndarray] = {"opencv": np.array(cv2.__version__), "numpy": np.array(np.__version__),
                                    "generator": np.array(GENERATOR_VERSION)}
    for key, x in fixture_inputs().items():
        arrays[f"in/{key}"] = x
        for c in CORRUPTIONS:
            for s in range(1, 6):
                arrays[f"out/{key}/{c}/{s}"] = corrupt(x, c, s, seed=SEED, first_index=FIRST_INDEX)
    return arrays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite an existing fixture")
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args(argv)
    if args.out.exists() and not args.force:
        print(f"{args.out} exists; pass --force to overwrite it (only when the generator's output "
              "is meant to change).", file=sys.stderr)
        return 2
    tmp = args.out.with_name(args.out.name + ".partial")  # written whole, then renamed: never half a fixture
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **record())
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
