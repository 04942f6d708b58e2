#!/usr/bin/env python
"""How much the validation resize rounding matters: ours ('round') against torchvision's.

    python benchmarks/val_rounding.py [--count 512]

On the benchmark photographs (benchmarks/photos.py, ImageNet's spread of
sizes), the centre crop of ``ValTransform`` (shorter side 256, crop 224) by

- ``rounding='round'`` (the default): longer side ``round(256 * long / short)``,
  offsets ``floor((side - 224) / 2)``;
- ``rounding='torchvision'`` (torchvision's ``Resize`` + ``CenterCrop``,
  ChainerCV's ``scale`` + ``center_crop``): longer side truncated, offsets rounded;

and prints how many images get another resized size, another offset, and
other pixels, with the size of the pixel differences.
"""

import argparse
import os
import sys

import numpy
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from chainer_resnet.data import transforms  # noqa: E402
import photos  # noqa: E402


def before(image, crop=224, short=256):
    w, h = image.size
    size = (short, int(round(w * short / h))) if h <= w else (int(round(h * short / w)), short)
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    return size, (top, left), numpy.asarray(image.resize(size[::-1], Image.BILINEAR).crop(
        (left, top, left + crop, top + crop)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--count', type=int, default=512)
    args = p.parse_args(argv)
    found = photos.photo_set(count=args.count, seed=0)
    now = transforms.ValTransform(224, transforms.IMAGENET_MEAN, transforms.IMAGENET_STD,
                                  normalize=False, rounding='torchvision')
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(found.train_dir)
                   for f in files)
    sizes = offsets = differ = 0
    diffs = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert('RGB')
            size, offset, old = before(image)
            new_size = now.resized_size(image.size[1], image.size[0])
            new_offset = tuple(int(round((s - 224) / 2)) for s in new_size)
            new = now(image).transpose(1, 2, 0)
        sizes += size != new_size
        offsets += offset != new_offset
        if not numpy.array_equal(old, new):
            differ += 1
            d = numpy.abs(old.astype(int) - new.astype(int))
            diffs.append((d.mean(), d.max(), (d > 0).mean()))
    n = len(paths)
    print('{} photographs: resized size differs for {} ({:.1%}), crop offset for {} ({:.1%}), '
          'pixels for {} ({:.1%})'.format(n, sizes, sizes / n, offsets, offsets / n, differ,
                                           differ / n))
    if diffs:
        d = numpy.array(diffs)
        print('where they differ: mean |difference| {:.2f} grey levels (median over images), '
              'largest {:.0f}; {:.0%} of the pixels differ (median)'.format(
                  numpy.median(d[:, 0]), d[:, 1].max(), numpy.median(d[:, 2])))


if __name__ == '__main__':
    main()
