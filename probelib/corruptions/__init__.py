"""Common corruptions: readers for the published "-C" sets and a fast, seeded generator.

Implements ``specs/corruptions.md``. The 19 corruptions of Hendrycks & Dietterich (15 benchmark +
4 "extra"), with the published per-severity parameters chosen by image size (CIFAR set for
S = max(H, W) ≤ 32, Tiny-ImageNet set for S ≤ 64, ImageNet set above).

- :func:`corrupt` corrupts a uint8 N×H×W×C batch. Every image draws from its own generator
  ``np.random.default_rng([seed, corruption_index, severity, image_index])``, so results do not
  depend on batching; the work itself is vectorised over the batch.
- :func:`load_corrupted` reads one corruption at one severity from a set in the CIFAR-10-C
  layout (``<name>.npy`` memory-mapped, ``labels.npy``) or the Tiny-ImageNet-C / ImageNet-C
  folder layout (``<name>/<severity>/<wnid>/*.JPEG``, lazy), including the embedded
  ``mnist5k-c`` (generated on first use into ``<data root>/mnist5k-c``).
- :func:`write_corrupted` / ``python -m probelib corrupt`` write any dataset in the CIFAR-10-C
  layout, atomically and resumably.
- Analysis helpers for the corrupted-data NCG study (NCG paper §1.4, Table 4 / Fig. 6):
  :func:`setting_stats`, :func:`robust_vs_natural`, :func:`severity_slopes`.

Layout: ``registry.py`` (:class:`Corruption`, the one :data:`REGISTRY` every name list, group and
parameter table derives from), ``noise.py`` / ``blur.py`` / ``weather.py`` / ``digital.py`` (one
algorithm per corruption, registered beside its function), ``_kernels.py`` and ``streams.py`` (their
shared numerics and per-image random streams), ``generator.py`` (:func:`corrupt`), ``sets.py`` and
``manifest.py`` (readers, writer, CLI), ``study.py`` (the NCG study and gallery helpers).

Row layout of a written ``<name>.npy``: severity-major blocks of N rows, one block per severity
listed in the JSON sidecar ``<name>.json`` (all five, 1..5, unless ``--severities`` asked for
fewer); without a sidecar (the published sets) the blocks are severities 1..5.
"""

from probelib.corruptions.blur import zoom_factors
from probelib.corruptions.generator import (BENCHMARK, CORRUPTIONS, DETERMINISTIC, EXTRA, GROUPS, MONOTONE, PARAMS,
                                            SEVERITIES, corrupt, corruption_group, corruption_names, parameter_set,
                                            severity_parameters)
from probelib.corruptions.registry import FAMILIES, REGISTRY, Corruption
from probelib.corruptions.weather import FROST_FILES, frost_textures, plasma_fractal
from probelib.corruptions.sets import (PUBLISHED, CorruptedSetError, add_cli, available_corruptions,
                                       corrupted_sets, ensure_mnist5k_c, load_corrupted, write_corrupted)
from probelib.corruptions.study import (compare_slopes, corrupted_ncg_table, plot_gallery,
                                        plot_severity_trends, robust_vs_natural, setting_stats,
                                        severity_change_table, severity_gallery, severity_slopes,
                                        to_uint8_images, ttest_counts)

__all__ = [
    "CORRUPTIONS", "BENCHMARK", "EXTRA", "GROUPS", "DETERMINISTIC", "corruption_names",
    "corruption_group", "parameter_set", "severity_parameters", "corrupt", "load_corrupted",
    "corrupted_sets", "available_corruptions", "write_corrupted", "ensure_mnist5k_c",
    "CorruptedSetError", "setting_stats", "robust_vs_natural", "severity_slopes", "add_cli",
    "severity_gallery", "plot_gallery", "severity_change_table", "to_uint8_images", "MONOTONE",
    "corrupted_ncg_table", "ttest_counts", "compare_slopes", "plot_severity_trends",
    "PARAMS", "SEVERITIES", "REGISTRY", "FAMILIES", "Corruption", "PUBLISHED", "FROST_FILES", "frost_textures",
    "plasma_fractal", "zoom_factors",
]
