"""probelib: probe how image classifiers behave off their training distribution.

Re-implements, in one code base, nearest category generalization (NCG; Yang et al., TMLR)
and the limits of post-hoc BN-statistics adaptation (AdaBN; Burns & Steinhardt, CVPR 2021).
"""

__version__ = "0.1.0"

from probelib._util import default_device, seed_everything  # noqa: E402

__all__ = ["__version__", "default_device", "seed_everything"]
