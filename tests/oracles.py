"""The published WaveMix (PyPI `wavemix` 0.2.4) as a test oracle, imported on the CPU despite its flaws:
it imports `numpy.lib.function_base` (gone in NumPy 2) and builds its DWT modules at import time on
`cuda:0` when a GPU is visible. Only tests use it; the engine never does."""
from __future__ import annotations

import sys
import types

import numpy as np

from engine.bench.references import import_pytorch_wavelets


def reference_wavemix_class():
    import_pytorch_wavelets()  # installs the pkg_resources stand-in if needed
    sys.modules.setdefault("numpy.lib.function_base", types.SimpleNamespace(hamming=np.hamming))
    from wavemix.classification import WaveMix
    return WaveMix


def reference_wavemix(num_classes: int = 1000):
    return reference_wavemix_class()(num_classes=num_classes, depth=16, mult=2, ff_channel=192, final_dim=192,
                                     dropout=0.5, level=3, patch_size=4)
