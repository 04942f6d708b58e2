"""Pixel values: ImageNet's per-channel statistics and the uint8 to float32 normalisation.

Every input path ends here: the transforms on the host (transforms.py), the
converters on the device (loader.Normalize, whose table and kernel give these
same float32 values), ten crops, evaluation. Statistics are in [0, 1] pixel
units; :func:`normalize` fixes the order of the four float32 operations, so a
result never depends on where or in what batch it was computed.
"""

import numpy

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet training images, in [0, 1] units."""

IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel RGB std of ImageNet training images, in [0, 1] units."""


def check_mean_std(mean, std):
    """``(mean, std)`` as tuples of 3 floats; ValueError unless they are
    per-channel statistics in [0, 1] pixel units."""
    mean = tuple(float(m) for m in mean)
    std = tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(
            'mean and std need one value per RGB channel, got mean={} '
            'std={}'.format(mean, std))
    if not all(0.0 <= m <= 1.0 for m in mean) or not all(
            s > 0.0 for s in std):
        raise ValueError(
            'mean must lie in [0, 1] and std be positive (both in [0, 1] '
            'pixel units, e.g. IMAGENET_MEAN, IMAGENET_STD), got mean={} '
            'std={}. Divide 0-255 statistics by 255.'.format(mean, std))
    return mean, std


def normalize(x, mean, std):
    """``(x / 255 - mean) / std`` of ``uint8`` images, as new C-contiguous float32.

    ``x`` has the channel axis third from the end: (3, H, W), or a batch
    (N, 3, H, W). The float32 operations are these four, in this order
    (cast, divide by 255, subtract the mean, divide by the std), so the
    result does not depend on the layout or batching of ``x``.
    """
    y = numpy.asarray(x).astype(numpy.float32, order='C')
    y /= numpy.float32(255)
    y -= numpy.asarray(mean, dtype=numpy.float32).reshape(3, 1, 1)
    y /= numpy.asarray(std, dtype=numpy.float32).reshape(3, 1, 1)
    return y
