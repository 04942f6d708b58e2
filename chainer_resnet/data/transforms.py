"""Transforms: ``(uint8 image, numpy.random.Generator)`` -> normalised float32 CHW.

Each transform is called as ``t(image, rng)`` with an RGB ``uint8``
(H, W, 3) image and returns a C-contiguous ``float32`` (3, crop, crop)
array, normalised as ``(x / 255 - mean) / std`` with ``mean`` and ``std`` in
[0, 1] units (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`). Random
transforms draw only from ``rng``, in a documented order, so a sample's
augmentation is a function of its generator's seed
(:class:`~chainer_resnet.data.sampling.AugmentedDataset` supplies it);
evaluation transforms are deterministic and ignore ``rng``.

Two families, one per recipe ``augmentation``:

- ``'random_resized'``: :class:`TrainTransform` / :class:`ValTransform`
  (random-resized crop, as in Goyal et al. 2017 and torchvision);
- ``'pre_resized'``: :class:`PreResizedRandomCropTransform` /
  :class:`PreResizedCenterCropTransform` (resize to 256x256 then crop, as
  in Chainer's ImageNet example).

:func:`from_recipe` builds the pair a recipe names.
"""

import math

import numpy
from PIL import Image

from chainer_resnet.data._checks import check_size, describe

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet training images, in [0, 1] units."""

IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel RGB std of ImageNet training images, in [0, 1] units."""

# Pillow >= 9.1 moved the filters into Image.Resampling; older ones only
# have the module-level names.
_BILINEAR = getattr(Image, 'Resampling', Image).BILINEAR


class _Normalize(object):
    """Scale to [0, 1], subtract ``mean``, divide by ``std``, HWC -> CHW."""

    def __init__(self, mean, std):
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
        self.mean = mean
        self.std = std

    def normalize(self, image):
        x = image.astype(numpy.float32) / numpy.float32(255)
        x -= numpy.asarray(self.mean, dtype=numpy.float32)
        x /= numpy.asarray(self.std, dtype=numpy.float32)
        return numpy.ascontiguousarray(x.transpose(2, 0, 1))


def _check_image(image):
    if (not isinstance(image, numpy.ndarray) or image.dtype != numpy.uint8
            or image.ndim != 3 or image.shape[2] != 3):
        raise ValueError(
            'transforms take an RGB uint8 array of shape (H, W, 3), got {}'
            .format(describe(image)))


def _check_rng(rng):
    if not isinstance(rng, numpy.random.Generator):
        raise TypeError(
            'random transforms take a numpy.random.Generator as rng, got {}; '
            'use numpy.random.default_rng(seed) or AugmentedDataset'
            .format(type(rng).__name__))


def _resize(image, size):
    """Bilinear (PIL) resize to ``size`` = (height, width)."""
    height, width = size
    return numpy.asarray(
        Image.fromarray(image).resize((width, height), _BILINEAR))


def sample_crop_box(height, width, scale, ratio, rng):
    """Sample a random-resized-crop box, as torchvision and Goyal et al. do.

    Up to 10 times: draw an area fraction uniformly in ``scale`` and an
    aspect ratio (width / height) log-uniformly in ``ratio``; accept the
    first box that fits in the image and place it uniformly at random.
    If none fits, return a centred box covering the whole image, narrowed
    to the nearest ratio in ``ratio``.

    Args:
        height (int), width (int): image size.
        scale (tuple of float): range of the box area as a fraction of
            the image area.
        ratio (tuple of float): range of the box width / height.
        rng (numpy.random.Generator): the source of randomness.

    Returns:
        tuple of int: ``(top, left, box_height, box_width)``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        box_w = int(round(math.sqrt(target_area * aspect)))
        box_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < box_w <= width and 0 < box_h <= height:
            top = int(rng.integers(0, height - box_h + 1))
            left = int(rng.integers(0, width - box_w + 1))
            return top, left, box_h, box_w
    image_ratio = width / height
    if image_ratio < ratio[0]:
        box_w = width
        box_h = min(height, max(1, int(round(width / ratio[0]))))
    elif image_ratio > ratio[1]:
        box_h = height
        box_w = min(width, max(1, int(round(height * ratio[1]))))
    else:
        box_h, box_w = height, width
    return (height - box_h) // 2, (width - box_w) // 2, box_h, box_w


class TrainTransform(_Normalize):
    """Random-resized crop, random flip, normalise (training).

    Draws, in this order: the crop box (:func:`sample_crop_box`), then the
    flip (probability 0.5). The crop is resized to ``crop_size`` squared
    with PIL's bilinear filter.

    Args:
        crop_size (int): output height and width.
        mean (tuple of float): per-channel RGB mean in [0, 1] units.
        std (tuple of float): per-channel RGB std in [0, 1] units.
        scale (tuple of float): crop area range, fraction of the image.
        ratio (tuple of float): crop width / height range.
        flip (bool): mirror horizontally with probability 0.5.

    Call ``t(image, rng)`` with an RGB ``uint8`` (H, W, 3) image and a
    ``numpy.random.Generator``; returns ``float32`` (3, crop_size, crop_size).
    """

    def __init__(self, crop_size, mean, std, scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3), flip=True):
        super().__init__(mean, std)
        self.crop_size = check_size('crop_size', crop_size)
        scale = tuple(float(s) for s in scale)
        ratio = tuple(float(r) for r in ratio)
        if not (len(scale) == 2 and 0 < scale[0] <= scale[1]):
            raise ValueError(
                'scale must be (low, high) with 0 < low <= high, got {}'
                .format(scale))
        if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
            raise ValueError(
                'ratio must be (low, high) with 0 < low <= high, got {}'
                .format(ratio))
        self.scale = scale
        self.ratio = ratio
        self.flip = bool(flip)

    def __call__(self, image, rng):
        _check_image(image)
        _check_rng(rng)
        top, left, box_h, box_w = sample_crop_box(
            image.shape[0], image.shape[1], self.scale, self.ratio, rng)
        # Crop, then resize (as torchvision does): PIL's resize(box=...)
        # would also read pixels just outside the box.
        crop = numpy.ascontiguousarray(
            image[top:top + box_h, left:left + box_w])
        out = _resize(crop, (self.crop_size, self.crop_size))
        if self.flip and rng.random() < 0.5:
            out = out[:, ::-1]
        return self.normalize(out)


class ValTransform(_Normalize):
    """Resize the shorter side, centre crop, normalise (evaluation).

    The shorter side becomes ``round(crop_size * resize_ratio)`` (256 for
    224 crops), bilinear, keeping the aspect ratio; then the centre
    ``crop_size`` squared is cut out. Deterministic.

    Args:
        crop_size (int): output height and width.
        mean (tuple of float): per-channel RGB mean in [0, 1] units.
        std (tuple of float): per-channel RGB std in [0, 1] units.
        resize_ratio (float): shorter side / crop size, at least 1.

    Call ``t(image, rng=None)``; ``rng`` is accepted and ignored so that
    train and validation transforms share a signature.
    """

    def __init__(self, crop_size, mean, std, resize_ratio=256 / 224):
        super().__init__(mean, std)
        self.crop_size = check_size('crop_size', crop_size)
        if not resize_ratio >= 1:
            raise ValueError(
                'resize_ratio must be at least 1 (the crop must fit in the '
                'resized image), got {!r}'.format(resize_ratio))
        self.resize_ratio = float(resize_ratio)

    def __call__(self, image, rng=None):
        _check_image(image)
        height, width = image.shape[:2]
        short = int(round(self.crop_size * self.resize_ratio))
        if height <= width:
            size = (short, max(short, int(round(width * short / height))))
        else:
            size = (max(short, int(round(height * short / width))), short)
        out = _resize(image, size)
        top = (size[0] - self.crop_size) // 2
        left = (size[1] - self.crop_size) // 2
        out = out[top:top + self.crop_size, left:left + self.crop_size]
        return self.normalize(out)


class _PreResized(_Normalize):
    """Shared set-up of the two pre-resized transforms."""

    def __init__(self, crop_size, mean, std, pre_size):
        super().__init__(mean, std)
        self.crop_size = check_size('crop_size', crop_size)
        self.pre_size = check_size('pre_size', pre_size)
        if self.pre_size < self.crop_size:
            raise ValueError(
                'pre_size ({}) must be at least crop_size ({})'.format(
                    pre_size, crop_size))


class PreResizedRandomCropTransform(_PreResized):
    """Resize to ``pre_size`` squared, random crop, random flip, normalise.

    The augmentation of Chainer's ImageNet example (and of Akiba et al.
    2017), which stores images pre-resized to 256x256 and crops 224x224.
    Draws, in this order: the crop's top, its left, then the flip.

    Args:
        crop_size (int): output height and width.
        mean (tuple of float): per-channel RGB mean in [0, 1] units.
        std (tuple of float): per-channel RGB std in [0, 1] units.
        pre_size (int): side of the square the whole image is resized to
            (bilinear, aspect ratio not kept); at least ``crop_size``.
        flip (bool): mirror horizontally with probability 0.5.
    """

    def __init__(self, crop_size, mean, std, pre_size=256, flip=True):
        super().__init__(crop_size, mean, std, pre_size)
        self.flip = bool(flip)

    def __call__(self, image, rng):
        _check_image(image)
        _check_rng(rng)
        out = _resize(image, (self.pre_size, self.pre_size))
        slack = self.pre_size - self.crop_size
        top = int(rng.integers(0, slack + 1))
        left = int(rng.integers(0, slack + 1))
        out = out[top:top + self.crop_size, left:left + self.crop_size]
        if self.flip and rng.random() < 0.5:
            out = out[:, ::-1]
        return self.normalize(out)


class PreResizedCenterCropTransform(_PreResized):
    """Resize to ``pre_size`` squared, centre crop, normalise (evaluation).

    The validation counterpart of :class:`PreResizedRandomCropTransform`.
    Call ``t(image, rng=None)``; ``rng`` is ignored.
    """

    def __init__(self, crop_size, mean, std, pre_size=256):
        super().__init__(crop_size, mean, std, pre_size)

    def __call__(self, image, rng=None):
        _check_image(image)
        out = _resize(image, (self.pre_size, self.pre_size))
        start = (self.pre_size - self.crop_size) // 2
        out = out[start:start + self.crop_size, start:start + self.crop_size]
        return self.normalize(out)


def from_recipe(recipe):
    """The ``(train_transform, val_transform)`` pair of a recipe.

    ``recipe.augmentation == 'pre_resized'`` gives
    :class:`PreResizedRandomCropTransform` and
    :class:`PreResizedCenterCropTransform` over ``pre_resize_size`` squared
    images; anything else gives :class:`TrainTransform` (crop area
    ``crop_area_min`` to 1, the default aspect range) and
    :class:`ValTransform`. Both use the recipe's ``crop_size``, ``mean`` and
    ``std``; the training transform flips if ``horizontal_flip``.

    Args:
        recipe (chainer_resnet.recipes.Recipe): the recipe.

    Returns:
        tuple: ``(train_transform, val_transform)``.
    """
    if recipe.augmentation == 'pre_resized':
        train = PreResizedRandomCropTransform(
            recipe.crop_size, recipe.mean, recipe.std,
            pre_size=recipe.pre_resize_size, flip=recipe.horizontal_flip)
        val = PreResizedCenterCropTransform(
            recipe.crop_size, recipe.mean, recipe.std,
            pre_size=recipe.pre_resize_size)
    else:
        train = TrainTransform(
            recipe.crop_size, recipe.mean, recipe.std,
            scale=(recipe.crop_area_min, 1.0), flip=recipe.horizontal_flip)
        val = ValTransform(recipe.crop_size, recipe.mean, recipe.std)
    return train, val
