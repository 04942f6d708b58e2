"""Transforms: ``(image, numpy.random.Generator)`` -> one CHW crop.

Each transform is called as ``t(image, rng)``. ``image`` is an RGB
``uint8`` (H, W, 3) array or a PIL image in any mode (what
:class:`~chainer_resnet.data.loader.PILImages` gives: the decoded file,
not yet converted to RGB or to an array). The output is C-contiguous
(3, crop, crop), in one of two forms:

- ``normalize=True`` (the default): ``float32``, ``(x / 255 - mean) / std``
  with ``mean`` and ``std`` in [0, 1] units (:data:`IMAGENET_MEAN`,
  :data:`IMAGENET_STD`), ready for the model;
- ``normalize=False``: the ``uint8`` pixels before that step, a quarter of
  the bytes to move between processes and to the device;
  :class:`~chainer_resnet.data.loader.Normalize`, the converter, then
  normalises the batch on the device and gives exactly the ``float32``
  output of ``normalize=True``.

Random transforms draw only from ``rng``, in a documented order, so a
sample's augmentation is a function of its generator's seed
(:class:`~chainer_resnet.data.sampling.AugmentedDataset` supplies it);
evaluation transforms are deterministic and ignore ``rng``.

The work stays in PIL until the output crop: a PIL image is cut, then
converted to RGB (the conversion is per pixel, so it commutes with the
cut), resized and mirrored in PIL, and only the crop becomes an array,
one channel plane at a time. Nothing converts the whole decoded image to
an array, and no array is transposed.

Same pixels whatever the input, and as before: an image read as a PIL
image and the same image read as an RGB array
(:func:`~chainer_resnet.data.layouts.read_image`) give bit-identical
outputs, and both are bit-identical to what these transforms returned
before they took PIL images (the same crop boxes from the same draws, the
same PIL resize, the same float32 operations;
``tests/test_data_transforms.py`` checks this against the earlier code
written out, on JPEG files in RGB, L and CMYK).

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
# The pixel statistics and their normalisation, under their long-standing names here.
from chainer_resnet.data.pixels import (  # noqa: F401
    IMAGENET_MEAN, IMAGENET_STD, check_mean_std, normalize)

# Pillow >= 9.1 moved the filters into Image.Resampling and the flips into
# Image.Transpose; older ones only have the module-level names.
_BILINEAR = getattr(Image, 'Resampling', Image).BILINEAR
_MIRROR = getattr(Image, 'Transpose', Image).FLIP_LEFT_RIGHT


class _Output(object):
    """Mean, std and output form shared by the transforms."""

    def __init__(self, mean, std, normalize=True):
        self.mean, self.std = check_mean_std(mean, std)
        self.normalized = bool(normalize)

    def normalize(self, image):
        """Normalise an RGB ``uint8`` (H, W, 3) image: ``float32`` (3, H, W)."""
        return normalize(image.transpose(2, 0, 1), self.mean, self.std)

    def _output(self, image, flip=False):
        """The RGB PIL `image`, mirrored if `flip`, as the output array."""
        if flip:
            image = image.transpose(_MIRROR)
        x = _planes(image)
        return normalize(x, self.mean, self.std) if self.normalized else x


def _check_image(image):
    if isinstance(image, Image.Image):
        return
    if (not isinstance(image, numpy.ndarray) or image.dtype != numpy.uint8
            or image.ndim != 3 or image.shape[2] != 3):
        raise ValueError(
            'transforms take an RGB uint8 array of shape (H, W, 3) or a PIL '
            'image, got {}'.format(describe(image)))


def _check_rng(rng):
    if not isinstance(rng, numpy.random.Generator):
        raise TypeError(
            'random transforms take a numpy.random.Generator as rng, got {}; '
            'use numpy.random.default_rng(seed) or AugmentedDataset'
            .format(type(rng).__name__))


def _height_width(image):
    if isinstance(image, Image.Image):
        return image.size[1], image.size[0]
    return image.shape[0], image.shape[1]


def _rgb(image, box=None):
    """`image` (array or PIL image), or its ``(top, left, height, width)`` box,
    as an RGB PIL image: cut first, then converted."""
    if isinstance(image, Image.Image):
        if box is not None:
            top, left, height, width = box
            image = image.crop((left, top, left + width, top + height))
        return image if image.mode == 'RGB' else image.convert('RGB')
    if box is not None:
        top, left, height, width = box
        image = numpy.ascontiguousarray(image[top:top + height, left:left + width])
    return Image.fromarray(image)


def _resize(image, size):
    """Bilinear (PIL) resize of a PIL image to ``size`` = (height, width)."""
    height, width = size
    return image.resize((width, height), _BILINEAR)


def shorter_side_size(height, width, short):
    """The (height, width) of an image whose shorter side is resized to
    ``short``, keeping the aspect ratio (the longer side rounded, at least
    ``short``): what :class:`ValTransform` resizes to (with its default
    ``rounding='round'``), and what ``python -m chainer_resnet.data.prepare
    --resize shorter`` writes."""
    if height <= width:
        return short, max(short, int(round(width * short / height)))
    return max(short, int(round(height * short / width))), short


def _crop(image, top, left, size):
    return image.crop((left, top, left + size, top + size))


def _planes(image):
    """An RGB PIL image as a (3, H, W) ``uint8`` array.

    PIL packs each band on its own (``tobytes('raw', 'R')``): one copy per
    plane, about 4x cheaper than transposing an (H, W, 3) array.
    """
    width, height = image.size
    x = numpy.empty((3, height, width), dtype=numpy.uint8)
    for c, band in enumerate('RGB'):
        x[c] = numpy.frombuffer(image.tobytes('raw', band), dtype=numpy.uint8).reshape(
            height, width)
    return x


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


class TrainTransform(_Output):
    """Random-resized crop, random flip, normalise (training).

    Draws, in this order: the crop box (:func:`sample_crop_box`), then the
    flip (probability 0.5). The crop is cut out, converted to RGB, and
    resized to ``crop_size`` squared with PIL's bilinear filter.

    Args:
        crop_size (int): output height and width.
        mean (tuple of float): per-channel RGB mean in [0, 1] units.
        std (tuple of float): per-channel RGB std in [0, 1] units.
        scale (tuple of float): crop area range, fraction of the image.
        ratio (tuple of float): crop width / height range.
        flip (bool): mirror horizontally with probability 0.5.
        normalize (bool): ``float32`` normalised output; ``False``: ``uint8``
            (normalise with :class:`~chainer_resnet.data.loader.Normalize`).

    Call ``t(image, rng)`` with an RGB ``uint8`` (H, W, 3) image or a PIL
    image and a ``numpy.random.Generator``; returns (3, crop_size, crop_size).
    """

    def __init__(self, crop_size, mean, std, scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3), flip=True, normalize=True):
        super().__init__(mean, std, normalize)
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
        box = sample_crop_box(*_height_width(image), self.scale, self.ratio, rng)
        # Crop, then resize (as torchvision does): PIL's resize(box=...)
        # would also read pixels just outside the box.
        out = _resize(_rgb(image, box), (self.crop_size, self.crop_size))
        return self._output(out, flip=self.flip and rng.random() < 0.5)


class ValTransform(_Output):
    """Resize the shorter side, centre crop, normalise (evaluation).

    The shorter side becomes ``short = round(crop_size * resize_ratio)``
    (256 for 224 crops), bilinear, keeping the aspect ratio; then the centre
    ``crop_size`` squared is cut out. Two roundings (``rounding``):

    - ``'round'`` (the default, how every run so far was evaluated): the
      longer side ``round(long * short / shorter)``, the offsets
      ``(side - crop_size) // 2``;
    - ``'torchvision'``: the longer side ``int(short * long / shorter)``, the
      offsets ``round((side - crop_size) / 2)`` (half to even): torchvision's
      ``Resize(256)`` + ``CenterCrop(224)`` (and ChainerCV's ``scale`` +
      ``center_crop``), pixel for pixel on the same PIL image
      (tests/test_reference.py), the geometry of its published numbers.

    They cut a quarter of ImageNet-like photographs half a pixel apart, and
    move the demo's top-1 by 0.6 points (benchmarks/README.md, "Validation
    resize rounding"). Deterministic.

    Args:
        crop_size (int): output height and width.
        mean (tuple of float): per-channel RGB mean in [0, 1] units.
        std (tuple of float): per-channel RGB std in [0, 1] units.
        resize_ratio (float): shorter side / crop size, at least 1.
        normalize (bool): as in :class:`TrainTransform`.
        rounding (str): ``'round'`` or ``'torchvision'`` (above).

    Call ``t(image, rng=None)``; ``rng`` is accepted and ignored so that
    train and validation transforms share a signature.
    """

    def __init__(self, crop_size, mean, std, resize_ratio=256 / 224, normalize=True,
                 rounding='round'):
        super().__init__(mean, std, normalize)
        if rounding not in ('round', 'torchvision'):
            raise ValueError("rounding must be 'round' or 'torchvision', got {!r}".format(
                rounding))
        self.rounding = rounding
        self.crop_size = check_size('crop_size', crop_size)
        if not resize_ratio >= 1:
            raise ValueError(
                'resize_ratio must be at least 1 (the crop must fit in the '
                'resized image), got {!r}'.format(resize_ratio))
        self.resize_ratio = float(resize_ratio)

    def __call__(self, image, rng=None):
        _check_image(image)
        height, width = _height_width(image)
        size = self.resized_size(height, width)
        out = _resize(_rgb(image), size)
        top, left = self.offsets(size)
        return self._output(_crop(out, top, left, self.crop_size))

    def resized_size(self, height, width):
        """``(height, width)`` of the image after the resize, before the crop."""
        short = int(round(self.crop_size * self.resize_ratio))
        if self.rounding == 'torchvision':
            return ((short, int(short * width / height)) if height <= width
                    else (int(short * height / width), short))
        return shorter_side_size(height, width, short)

    def offsets(self, size):
        """``(top, left)`` of the centre crop in an image of ``size`` = (height, width)."""
        if self.rounding == 'torchvision':
            return tuple(int(round((side - self.crop_size) / 2)) for side in size)
        return tuple((side - self.crop_size) // 2 for side in size)


class _PreResized(_Output):
    """Shared set-up of the two pre-resized transforms."""

    def __init__(self, crop_size, mean, std, pre_size, normalize):
        super().__init__(mean, std, normalize)
        self.crop_size = check_size('crop_size', crop_size)
        self.pre_size = check_size('pre_size', pre_size)
        if self.pre_size < self.crop_size:
            raise ValueError(
                'pre_size ({}) must be at least crop_size ({})'.format(
                    pre_size, crop_size))

    def _square(self, image):
        return _resize(_rgb(image), (self.pre_size, self.pre_size))


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
        normalize (bool): as in :class:`TrainTransform`.
    """

    def __init__(self, crop_size, mean, std, pre_size=256, flip=True, normalize=True):
        super().__init__(crop_size, mean, std, pre_size, normalize)
        self.flip = bool(flip)

    def __call__(self, image, rng):
        _check_image(image)
        _check_rng(rng)
        out = self._square(image)
        slack = self.pre_size - self.crop_size
        top = int(rng.integers(0, slack + 1))
        left = int(rng.integers(0, slack + 1))
        return self._output(_crop(out, top, left, self.crop_size),
                            flip=self.flip and rng.random() < 0.5)


class PreResizedCenterCropTransform(_PreResized):
    """Resize to ``pre_size`` squared, centre crop, normalise (evaluation).

    The validation counterpart of :class:`PreResizedRandomCropTransform`.
    Call ``t(image, rng=None)``; ``rng`` is ignored.
    """

    def __init__(self, crop_size, mean, std, pre_size=256, normalize=True):
        super().__init__(crop_size, mean, std, pre_size, normalize)

    def __call__(self, image, rng=None):
        _check_image(image)
        out = self._square(image)
        start = (self.pre_size - self.crop_size) // 2
        return self._output(_crop(out, start, start, self.crop_size))


def from_recipe(recipe, normalize=True):
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
        normalize (bool): ``float32`` normalised outputs (the default, ready
            for the model); ``False``: ``uint8`` outputs, for a trainer that
            normalises on the device with
            ``loader.Normalize(recipe.mean, recipe.std)``.

    Returns:
        tuple: ``(train_transform, val_transform)``.
    """
    if recipe.augmentation == 'pre_resized':
        train = PreResizedRandomCropTransform(
            recipe.crop_size, recipe.mean, recipe.std,
            pre_size=recipe.pre_resize_size, flip=recipe.horizontal_flip,
            normalize=normalize)
        val = PreResizedCenterCropTransform(
            recipe.crop_size, recipe.mean, recipe.std,
            pre_size=recipe.pre_resize_size, normalize=normalize)
    else:
        train = TrainTransform(
            recipe.crop_size, recipe.mean, recipe.std,
            scale=(recipe.crop_area_min, 1.0), flip=recipe.horizontal_flip,
            normalize=normalize)
        val = ValTransform(recipe.crop_size, recipe.mean, recipe.std, normalize=normalize,
                           rounding=recipe.val_resize_rounding)
    return train, val
