"""Per-channel image statistics, for the transforms' ``mean`` and ``std``.

:func:`compute_mean_std` pools the pixels of a dataset's images. As a
command it prints them for a training set, with the recipe overrides to
paste onto the trainer's command line::

    python -m chainer_resnet.data.stats TRAIN [--root ROOT] [--max-images N]

``TRAIN`` is a list file (paths relative to ``ROOT``, default the list
file's folder) or a class-folder root, opened as the trainer opens
``--train`` (:func:`chainer_resnet.data.layouts.open_dataset`). The output
ends with the line ``--set mean=r,g,b --set std=r,g,b``. Exit status 2,
with a one-line message, when the dataset cannot be read.
"""

import argparse
import sys

import numpy

from chainer_resnet.data import layouts
from chainer_resnet.data._checks import check_size


def compute_mean_std(dataset, max_images=None):
    """Per-channel mean and standard deviation of a dataset's images.

    Pools all pixels of the images (so large images weigh more), in [0, 1]
    units, ready for the transforms' ``mean`` and ``std``.

    Args:
        dataset: items are ``(image, label)`` pairs or bare images, each an
            RGB ``uint8`` (H, W, 3) array.
        max_images (int or None): use this many images, evenly spaced
            through the dataset (list files are often sorted by class).

    Returns:
        tuple: ``(mean, std)``, each a tuple of three floats.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError('compute_mean_std needs a non-empty dataset')
    if max_images is None or max_images >= n:
        order = range(n)
    else:
        order = numpy.unique(
            numpy.linspace(0, n - 1, check_size('max_images', max_images))
            .astype(numpy.int64))
    total = numpy.zeros(3)
    total_sq = numpy.zeros(3)
    count = 0
    for i in order:
        item = dataset[int(i)]
        image = item[0] if isinstance(item, tuple) else item
        pixels = numpy.asarray(image, dtype=numpy.float64).reshape(-1, 3)
        pixels /= 255.0
        total += pixels.sum(axis=0)
        total_sq += numpy.square(pixels).sum(axis=0)
        count += len(pixels)
    mean = total / count
    std = numpy.sqrt(numpy.maximum(total_sq / count - mean ** 2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _format(values):
    # 6 significant digits: far finer than datasets differ, and a tiny std
    # does not print as 0 (which a recipe rejects).
    return ['{:.6g}'.format(v) for v in values]


def _positive_int(text):
    try:
        return check_size('--max-images', int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv=None):
    """``python -m chainer_resnet.data.stats``; returns the exit status."""
    p = argparse.ArgumentParser(
        prog='python -m chainer_resnet.data.stats',
        description='Print the per-channel RGB mean and std of a training set, in [0, 1] '
        'units, and the --set overrides that make a recipe use them.')
    p.add_argument('train', metavar='TRAIN',
                   help='list file ("relative/path label" per line) or class-folder root')
    p.add_argument('--root', help="folder the list file's paths are relative to (default: "
                   "the list file's folder; ignored for a class-folder root)")
    p.add_argument('--max-images', type=_positive_int, metavar='N',
                   help='use N images evenly spaced through the dataset (default: all)')
    args = p.parse_args(argv)
    try:
        dataset = layouts.open_dataset(args.train, args.root, None)
        mean, std = compute_mean_std(dataset, max_images=args.max_images)
    except layouts.DatasetError as exc:
        print('error: {}'.format(exc), file=sys.stderr)
        return 2
    used = len(dataset) if args.max_images is None else min(args.max_images, len(dataset))
    print('images: {} of {} in {}'.format(used, len(dataset), args.train))
    print('mean (RGB, [0, 1] units): {}'.format(' '.join(_format(mean))))
    print('std  (RGB, [0, 1] units): {}'.format(' '.join(_format(std))))
    print('--set mean={} --set std={}'.format(','.join(_format(mean)), ','.join(_format(std))))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
