"""The "embedded" constants: corruption strengths for the 32 px embedded domain.

CIFAR-10-C's constants barely touch the embedded ResNet-20 (mean accuracy over the 15 stream
corruptions 92.7% at severity 1 and still 78.0% at severity 5, `benchmarks/corruption_accuracy.py
--profile cifar`), while ResNet-50 falls to roughly 20% at ImageNet-C severity 5. So the CCC
streams would be trivial. These tables keep each corruption's ImageNet-C form and raise its
strength until the embedded model's accuracy falls like ResNet-50's on ImageNet-C: the mean over
the 15 stream corruptions goes from >= 80% at severity 1 to <= 25% at severity 5. Brightness,
as on ImageNet, stays comparatively easy (it is not in any CCC noise pool).

Tuned by hand against `python benchmarks/corruption_accuracy.py --profile embedded` (the table it
prints is in the README). Row 0 means "no corruption"; units as in each corruption's docstring
(pixel constants at 32 px).
"""

from __future__ import annotations

import numpy as np

from .base import level_table


EMBEDDED: dict[str, np.ndarray] = {
    # noise: sigma, 1 / photons, salt-and-pepper amount, speckle sigma
    "gaussian_noise": level_table(0.0, 0.06, 0.1, 0.16, 0.25, 0.4),
    "shot_noise": level_table(0.0, 0.01, 0.025, 0.06, 0.15, 0.35),
    "impulse_noise": level_table(0.0, 0.02, 0.04, 0.08, 0.14, 0.25),
    "speckle_noise": level_table(0.0, 0.1, 0.2, 0.35, 0.5, 0.7),
    # blur: (radius, alias blur), (sigma, max delta, iterations), (radius, sigma),
    # (first zoom, last zoom, zoom step), sigma
    "defocus_blur": level_table((0.0, 0.0), (1.0, 0.5), (1.5, 0.5), (2.0, 0.5), (2.6, 0.5), (3.3, 0.5)),
    "glass_blur": level_table((0.0, 1, 0), (0.3, 1, 0.2), (0.45, 1, 0.5), (0.6, 1, 1), (0.7, 2, 1), (0.8, 2, 2)),
    "motion_blur": level_table((0.0, 0.0), (6, 2), (8, 3), (10, 4), (13, 6), (16, 8)),
    "zoom_blur": level_table((1.0, 1.0, 0.01), (1, 1.2, 0.02), (1, 1.4, 0.03), (1, 1.6, 0.04), (1, 1.9, 0.05),
                       (1, 2.3, 0.06)),
    "gaussian_blur": level_table(0.0, 0.7, 1.0, 1.4, 1.8, 2.4),
    # weather: snow (layer mean, layer std, zoom, threshold, blur radius, blur sigma, image weight),
    # frost (image weight, frost weight), fog (strength, wibble decay)
    "snow": level_table(
        (0.1, 0.2, 1, 1.0, 8, 3, 1.0), (0.1, 0.2, 1, 0.6, 8, 3, 0.9), (0.2, 0.3, 1.5, 0.55, 10, 4, 0.8),
        (0.25, 0.3, 1.75, 0.55, 12, 5, 0.75), (0.35, 0.32, 1.75, 0.52, 13, 6, 0.7),
        (0.6, 0.35, 1.5, 0.45, 14, 12, 0.5),
    ),
    "frost": level_table((1.0, 0.0), (0.9, 0.35), (0.75, 0.55), (0.6, 0.7), (0.45, 0.8), (0.35, 0.9)),
    "fog": level_table((0.0, 3.0), (0.75, 2.5), (1.5, 2), (2.5, 1.75), (3.5, 1.5), (5, 1.4)),
    # digital: value shift, contrast factor, pixelate factor, JPEG quality,
    # elastic (alpha, sigma, affine jitter, reference size), all in pixels at 32 px
    "brightness": level_table(0.0, 0.15, 0.3, 0.5, 0.7, 0.85),
    "contrast": level_table(1.0, 0.5, 0.32, 0.22, 0.15, 0.08),
    "pixelate": level_table(1.0, 0.7, 0.55, 0.42, 0.32, 0.22),
    "jpeg": level_table(100, 30, 16, 10, 6, 3),
    # held out, CIFAR-10-C's constants: saturate (factor, offset); spatter as in weather.py
    "saturate": level_table((1.0, 0.0), (0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)),
    "spatter": level_table(
        (0.62, 0.1, 0.7, 0.7, 0.0, 0), (0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0), (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
    "elastic": level_table((0, 0, 0, 32), (0, 0, 3, 32), (2, 4, 3.5, 32), (4, 1.5, 3, 32), (6, 1.2, 3, 32),
                     (9, 1, 3, 32)),
}
