"""The two on-disk dataset layouts, read as ``(image, label)`` pairs.

Every item is an RGB ``uint8`` (H, W, 3) image and an ``int32`` label:

- :class:`ListDataset`: a list file with one ``relative/path.JPEG label``
  per line (the layout of Chainer's ImageNet example; the file itself is
  read and parsed by :mod:`~chainer_resnet.data.listfile`);
- :class:`FolderDataset`: one sub-folder per class (torchvision's
  ``ImageFolder`` layout).

:func:`open_dataset` picks the layout from the path, as the trainer's
``--train`` and ``--val`` do. Every problem is a :class:`DatasetError` that
names the file (and line) and says what to do.

A wrong path fails at start-up, not hours into training: by default a
list file's images are checked for existence when the dataset is built.
At scale that check is split (field-notes.md, "What grows with the number
of ranks"): one rank builds the index with ``check_files=False`` and
broadcasts it (:func:`chainer_resnet.communication.from_rank0`), then each
rank calls :meth:`~ListDataset.check_files` on its own shard only, so the
filesystem serves one stat per image in all instead of one per image per
rank (1.3 billion at 1,024 ranks on ImageNet)::

    train = from_rank0(comm, open_dataset, path, root, n, check_files=False)
    train.check_files(numpy.unique(my_indices))

Labels must mean the same class in the training and the validation set,
and stay below the model's ``num_classes``. A list file's labels are
checked against ``num_classes``; a class-folder tree's folder count is,
and a validation tree is checked against the training tree's class names
(``classes=``), because its labels are positions in its own sorted folder
list and one missing folder shifts every label after it::

    train = open_dataset(train_path, root, num_classes)
    val = open_dataset(val_path, root, num_classes,
                       classes=getattr(train, 'classes', None))
"""

import os
import socket

import numpy
from PIL import Image

import chainer

from chainer_resnet.data import listfile

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm')
"""Extensions :class:`FolderDataset` reads as images (case-insensitive)."""

# How many missing images an error message lists before summarising.
_MAX_REPORTED = 5


class DatasetError(ValueError):
    """A dataset file, folder or image is missing or malformed.

    The message names the file (and line, for list files) and says what
    to do about it.
    """


def read_image(path, as_array=True):
    """Read an image file as an RGB ``uint8`` array of shape (H, W, 3).

    Grayscale, palette, CMYK and RGBA images are converted with PIL's
    ``convert('RGB')`` (alpha is dropped). The pixels are taken as stored:
    an EXIF ``Orientation`` tag (which cameras and phones set instead of
    rotating the pixels) is not applied, as torchvision's default image
    loader and Chainer's examples do not apply it either, so such a photo
    is seen sideways or upside down. To honour the tag, rotate the files
    once when preparing the data (``PIL.ImageOps.exif_transpose``). ``as_array=False`` returns the
    decoded PIL image in the file's own mode instead, for the transforms,
    which crop before they convert (the same pixels: conversion is per pixel).

    Raises:
        DatasetError: the file is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert('RGB') if as_array else img
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
    return numpy.array(rgb, dtype=numpy.uint8) if as_array else rgb


class _ImageLabelDataset(chainer.dataset.DatasetMixin):
    """Common part of the two layouts: subclasses set ``paths`` and
    ``labels``."""

    def __len__(self):
        return len(self.paths)

    def get_example(self, i):
        """Return ``(image, label)``: RGB ``uint8`` (H, W, 3) and ``int32``."""
        return read_image(self.paths[i]), self.labels[i]

    def check_files(self, indices):
        """Check that the images at `indices` exist: one ``stat`` each.

        Each rank passes its own shard (the indices it will read), so the
        check costs O(shard) filesystem metadata calls per rank. Repeated
        indices are checked once.

        Raises:
            DatasetError: some of them are missing; the message gives their
                number, the first few (with list-file line numbers) and the
                root, and says what to do.
        """
        indices = numpy.unique(numpy.asarray(indices, dtype=numpy.int64))
        if len(indices) and not 0 <= indices[0] <= indices[-1] < len(self):
            raise IndexError('check_files: indices must lie in [0, {}), got {}..{}'.format(
                len(self), indices[0], indices[-1]))
        paths, exists = self.paths, os.path.exists
        missing = [i for i in indices.tolist() if not exists(paths[i])]
        if missing:
            raise DatasetError(self._missing_message(missing, len(indices)))

    def _missing_message(self, missing, checked):
        raise NotImplementedError


class ListDataset(_ImageLabelDataset):
    """Images listed in a text file, one ``relative/path label`` per line.

    Paths are relative to ``root`` and may not contain whitespace; labels
    are integers in ``[0, num_classes)``. Blank lines are ignored. The file
    is UTF-8; a leading byte-order mark (as some Windows editors write) is
    dropped. By
    default every listed file is checked for existence when the dataset is
    built, so a wrong ``root`` fails here and not hours into training; with
    ``check_files=False`` nothing but the list file and ``root`` is looked
    at, and :meth:`check_files` checks the images a rank will read.

    The object pickles to about 40 bytes per image plus the length of
    ``root`` (the absolute path, the label, the line number): 80-100 MB for
    ImageNet's 1.28 M training images (benchmarks/README.md, "Start-up and
    resume at scale").

    Args:
        list_path (str): the list file.
        root (str): the folder the listed paths are relative to.
        num_classes (int or None): if given, labels must be below it.
        check_files (bool): check that every listed image exists (one
            ``stat`` per image).
        allow_duplicates (bool): accept an image listed on several lines
            (a training list may oversample on purpose; each line is a sample
            of the epoch). False for a validation list, where a repeated image
            weighs twice in top-1 and top-5.

    Attributes:
        paths (list of str): absolute image paths, in list-file order.
        labels (numpy.ndarray): ``int32`` labels, same order.
        line_numbers (numpy.ndarray): the list-file line of each image.
        list_path (str): ``list_path``; root (str): absolute ``root``.
        num_classes (int): ``num_classes`` if given, else the largest
            label plus one.
        duplicates (listfile.Duplicates or None): the images listed more
            than once (their count and the first few, with their lines).

    Raises:
        DatasetError: the list file or root is missing, it is not UTF-8, a
            line is malformed, a label is not an integer or out of range, an
            image is listed with two labels, or (not ``allow_duplicates``) more
            than once, or (``check_files``) images are missing.
    """

    def __init__(self, list_path, root, num_classes=None, check_files=True,
                 allow_duplicates=True):
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
        paths, labels, line_numbers = listfile.parse(list_path, num_classes)
        self.paths = listfile.absolute_paths(root, paths)
        self.labels = numpy.asarray(labels, dtype=numpy.int32)
        self.line_numbers = numpy.asarray(line_numbers, dtype=numpy.int32)
        self.list_path = list_path
        self.root = root
        self.num_classes = (int(self.labels.max()) + 1 if num_classes is None
                            else int(num_classes))
        self.duplicates = listfile.duplicates(self.paths, labels, line_numbers, list_path)
        if self.duplicates and not allow_duplicates:
            raise DatasetError(
                '{} lists {}. Each line of a validation list is counted in top-1 and '
                'top-5, so a repeated image weighs twice and the accuracy is not that of '
                'the set. Keep one line per image.'.format(
                    list_path, listfile.describe_duplicates(self.duplicates)))
        if check_files:
            self.check_files(numpy.arange(len(self.paths)))

    def _missing_message(self, missing, checked):
        shown = '; '.join('line {}: {}'.format(self.line_numbers[i], self.paths[i])
                          for i in missing[:_MAX_REPORTED])
        if checked == len(self):
            which = '{} of the {} images listed in {}'.format(
                len(missing), checked, self.list_path)
        else:
            which = ('{} of the {} images of this rank\'s shard (of the {} listed in {})'
                     .format(len(missing), checked, len(self), self.list_path))
        return ('{} are missing under root {} on host {} (first: {}). Check that root is '
                'the folder the listed paths are relative to, and that it is mounted at '
                'the same path on every node.'.format(
                    which, self.root, socket.gethostname(), shown))


class ClassNames(list):
    """Class folder names in label order, remembering the ``root`` they
    were read from (so that a mismatch message can name both trees)."""

    def __init__(self, names, root=None):
        super().__init__(names)
        self.root = root


class FolderDataset(_ImageLabelDataset):
    """Images in one sub-folder per class.

    Class ``k`` is the ``k``-th sub-folder of ``root`` in sorted order.
    Images are the files (searched recursively) whose extension is in
    :data:`IMAGE_EXTENSIONS`, sorted by path within each class; other
    files and hidden entries (names starting with ``.``) are ignored.

    Because labels are positions in the sorted folder list, a tree with a
    class folder too few or too many gives every later class another label
    without any error downstream; ``num_classes`` and ``classes`` catch
    that before any image is listed.

    Args:
        root (str): the folder holding the class folders.
        num_classes (int or None): if given, the number of class folders
            must equal it (the model has that many outputs).
        classes (sequence of str or None): if given, the class folders must
            be exactly these names: pass the training tree's ``classes``
            when opening the validation tree. A :class:`ClassNames` (what
            ``classes`` of a :class:`FolderDataset` is) also names its
            root in the message.

    Attributes:
        root (str): absolute ``root``.
        classes (ClassNames): class folder names; ``classes[label]``.
        paths (list of str): absolute image paths, class by class.
        labels (numpy.ndarray): ``int32`` labels, same order.
        num_classes (int): ``len(classes)``.

    Raises:
        DatasetError: ``root`` is missing or has no class folders, the class
            folders differ from ``classes`` or their number from
            ``num_classes``, or a class folder holds no images.

    Building walks every class folder, which is its own existence check;
    :meth:`check_files` checks again, on another rank or node, the files
    that walk found (on one rank: see the module docstring).
    """

    def __init__(self, root, num_classes=None, classes=None):
        if not os.path.isdir(root):
            raise DatasetError(
                'image root {} is not a folder. Pass a folder with one '
                'sub-folder of images per class.'.format(root))
        root = os.path.abspath(root)
        found = sorted(
            name for name in os.listdir(root)
            if not name.startswith('.')
            and os.path.isdir(os.path.join(root, name)))
        if not found:
            raise DatasetError(
                'image root {} has no class folders. Put the images of '
                'class k in a sub-folder; classes are the sorted sub-folder '
                'names.'.format(root))
        if classes is not None:
            _check_class_names(root, found, classes)
        if num_classes is not None and len(found) != num_classes:
            raise DatasetError(
                'image root {} has {} class folders but the recipe has num_classes={}, '
                'so labels would not match the model\'s outputs. Fix the tree (one '
                'sub-folder per class) or pass --set num_classes={}.'.format(
                    root, len(found), num_classes, len(found)))
        paths, labels = [], []
        for label, name in enumerate(found):
            files = _list_images(os.path.join(root, name))
            if not files:
                raise DatasetError(
                    'class folder {} (class {!r} in {}) holds no images with '
                    'extensions {}. Add images or remove the folder.'.format(
                        os.path.join(root, name), name, root,
                        ' '.join(IMAGE_EXTENSIONS)))
            paths.extend(files)
            labels.extend([label] * len(files))
        self.root = root
        self.classes = ClassNames(found, root)
        self.paths = paths
        self.labels = numpy.asarray(labels, dtype=numpy.int32)
        self.num_classes = len(found)

    def _missing_message(self, missing, checked):
        shown = '; '.join(self.paths[i] for i in missing[:_MAX_REPORTED])
        return ('{} of the {} images checked on host {} are missing from image root {} '
                '(first: {}); they were there when the tree was indexed. Files changed '
                'since, or this node sees another copy of the tree: make the same tree '
                'visible at the same path on every node, and do not change it during a '
                'run.'.format(len(missing), checked, socket.gethostname(), self.root, shown))


def _check_class_names(root, found, classes):
    expected = list(classes)
    if found == expected:
        return
    source = getattr(classes, 'root', None)
    source = 'the training tree {}'.format(source) if source else 'the classes given'
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if not missing and not extra:
        raise DatasetError(
            'class folders of {} are the names of {} in another order, so their '
            'labels differ. Pass the names in sorted order.'.format(root, source))
    raise DatasetError(
        'class folders of {} differ from {}: {} missing ({}), {} extra ({}). Labels are '
        'positions in the sorted folder list, so one folder too few or too many '
        'shifts every later label; give both trees the same class folders.'.format(
            root, source, len(missing), _first(missing), len(extra), _first(extra)))


def _first(names):
    if not names:
        return 'none'
    shown = ', '.join(names[:_MAX_REPORTED])
    if len(names) > _MAX_REPORTED:
        shown += ', ... {} more'.format(len(names) - _MAX_REPORTED)
    return shown


def _list_images(folder):
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith('.')]
        found.extend(
            os.path.join(dirpath, name) for name in filenames
            if not name.startswith('.')
            and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS)
    return sorted(found)


def open_dataset(path, root, num_classes, classes=None, check_files=True,
                 allow_duplicates=True):
    """Open ``path`` in the layout it has.

    Args:
        path (str): a class-folder root (:class:`FolderDataset`) or, if it
            is not a folder, a list file (:class:`ListDataset`).
        root (str or None): for a list file, the folder its paths are
            relative to; default the list file's own folder. Ignored for
            a class-folder root.
        num_classes (int or None): the bound on a list file's labels, or
            the number of folders a class-folder root must have.
        classes (sequence of str or None): for a class-folder root, the
            class names it must have: the training set's ``classes`` when
            opening the validation set (None for a list-file training set,
            which has no names). Ignored for a list file.
        check_files (bool): for a list file, check that every listed image
            exists (see :class:`ListDataset`). A class-folder root is always
            walked, which finds only files that exist.
        allow_duplicates (bool): for a list file, accept an image listed
            more than once (see :class:`ListDataset`); a class-folder tree
            holds each file once.

    Raises:
        DatasetError: as the layout's constructor does.
    """
    if os.path.isdir(path):
        return FolderDataset(path, num_classes=num_classes, classes=classes)
    return ListDataset(path, root or os.path.dirname(os.path.abspath(path)),
                       num_classes=num_classes, check_files=check_files,
                       allow_duplicates=allow_duplicates)
