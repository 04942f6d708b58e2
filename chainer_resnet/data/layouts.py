"""The two on-disk dataset layouts, read as ``(image, label)`` pairs.

Every item is an RGB ``uint8`` (H, W, 3) image and an ``int32`` label:

- :class:`ListDataset`: a list file with one ``relative/path.JPEG label``
  per line (the layout of Chainer's ImageNet example);
- :class:`FolderDataset`: one sub-folder per class (torchvision's
  ``ImageFolder`` layout).

:func:`open_dataset` picks the layout from the path, as the trainer's
``--train`` and ``--val`` do. Both layouts check their files when they are
built, so a wrong path fails at start-up; every problem is a
:class:`DatasetError` that names the file (and line) and says what to do.
"""

import os

import numpy
from PIL import Image

import chainer

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm')
"""Extensions :class:`FolderDataset` reads as images (case-insensitive)."""

# How many missing images an error message lists before summarising.
_MAX_REPORTED = 5


class DatasetError(ValueError):
    """A dataset file, folder or image is missing or malformed.

    The message names the file (and line, for list files) and says what
    to do about it.
    """


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


def open_dataset(path, root, num_classes):
    """Open ``path`` in the layout it has.

    Args:
        path (str): a class-folder root (:class:`FolderDataset`) or, if it
            is not a folder, a list file (:class:`ListDataset`).
        root (str or None): for a list file, the folder its paths are
            relative to; default the list file's own folder. Ignored for
            a class-folder root.
        num_classes (int or None): for a list file, the bound on its
            labels (see :class:`ListDataset`). Ignored for a class-folder
            root, whose classes are its sub-folders.

    Raises:
        DatasetError: as the layout's constructor does.
    """
    if os.path.isdir(path):
        return FolderDataset(path)
    return ListDataset(path, root or os.path.dirname(os.path.abspath(path)),
                       num_classes=num_classes)
