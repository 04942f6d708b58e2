#!/usr/bin/env python
"""Real photographs at ImageNet's spread of sizes, for the loader benchmarks.

    python benchmarks/photos.py                      # 512 JPEGs into the cache
    python benchmarks/photos.py --count 1024 --seed 1

The sources are the natural photographs inside scikit-image's wheel
(``skimage/data/``): the wheel is fetched once with ``pip download
--no-deps`` into ``<cache>/wheels`` and read with :mod:`zipfile`;
scikit-image is never installed or imported, and nothing of it ships with
the package. Each output image is a random crop of one source (half the area
of the largest box of the target aspect ratio up to all of it), flipped with
probability 0.5 and rescaled to a target size drawn from a mixture that
imitates ImageNet's training set:

====================  ========  ==============================================
target size           share     note
====================  ========  ==============================================
long side 500         58 %      500x375 (most), 500x333, 500x500, 500x400
long side 300-799     35 %      aspect ratio 0.56-1
long side 1000-1600    4 %      aspect ratio 0.56-1 (upscaled: smoother than
                                real photos, so they encode smaller)
long side 120-299      3 %
====================  ========  ==============================================

a quarter of them portrait; 2 % are greyscale JPEGs and 1 % CMYK JPEGs (at
least one each), JPEG quality 85-95 with 4:2:0 chroma subsampling. The
sources are smoother than most ImageNet photographs: the files hold about a
third of ImageNet's bytes per pixel (its JPEGs average about 110 KB), so
entropy decoding weighs less here. The set is a function of ``(seed,
count)`` and the source files. It is written as

    train/<source>/<index>.JPEG   the images, one class folder per source
    train.txt                     "train/<source>/<index>.JPEG <label>" lines
    manifest.json                 seed, count, source hashes, file sizes

under ``<cache>/photos-s<seed>-n<count>``, ``<cache>`` being the demo data's
cache (``$CHAINER_RESNET_DATA`` or ``~/.cache/chainer_resnet``). Like the
demo data, it is built into a temporary folder renamed into place, under a
file lock, and checked on every use (rebuilt if damaged).
"""

import argparse
import collections
import fcntl
import glob
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile

import numpy
from PIL import Image

from chainer_resnet.data.demo import default_data_dir, publish_staged

SKIMAGE_REQUIREMENT = 'scikit-image==0.26.0'
_WHEEL_GLOB = 'scikit_image-0.26.0-*.whl'
_FORMAT = 1

# The natural photographs of skimage/data (synthetic ones - charts, logos,
# text, phantoms - are left out). 'L': greyscale source.
SOURCES = collections.OrderedDict([
    ('astronaut.png', 'RGB'), ('chelsea.png', 'RGB'), ('coffee.png', 'RGB'),
    ('hubble_deep_field.jpg', 'RGB'), ('ihc.png', 'RGB'),
    ('motorcycle_left.png', 'RGB'), ('motorcycle_right.png', 'RGB'),
    ('retina.jpg', 'RGB'), ('rocket.jpg', 'RGB'),
    ('brick.png', 'L'), ('camera.png', 'L'), ('cell.png', 'L'), ('coins.png', 'L'),
    ('grass.png', 'L'), ('gravel.png', 'L'), ('moon.png', 'L'),
])

GREY_SHARE = 0.02
CMYK_SHARE = 0.01

PhotoSet = collections.namedtuple(
    'PhotoSet', ('root', 'list_path', 'train_dir', 'count', 'num_classes', 'manifest'))
PhotoSet.__doc__ = """Where :func:`photo_set` put the photographs.

``root``: the folder the list file's paths are relative to; ``list_path``:
``train.txt`` for ListDataset; ``train_dir``: the class-folder root for
FolderDataset or torchvision's ImageFolder (the same files); ``manifest``:
the parsed manifest.json (``stats`` summarises sizes and modes).
"""


class PhotoError(RuntimeError):
    """The source wheel cannot be had or read, or the cache cannot be written."""


def photo_set(count=512, seed=0, cache_dir=None, wheel=None, rebuild=False):
    """Return the benchmark photographs, building them on first use.

    Args:
        count (int): number of images (at least 2).
        seed (int): seed of every random choice.
        cache_dir (str or None): default: the demo data's cache folder.
        wheel (str or None): a scikit-image wheel (any platform's: only its
            data files are read); default: ``<cache_dir>/wheels``, fetched
            there with ``pip download`` if absent.
        rebuild (bool): rebuild even if the cache is intact.
    """
    if int(count) != count or count < 2:
        raise ValueError('count must be an integer of at least 2, got {!r}'.format(count))
    if int(seed) != seed or seed < 0:
        raise ValueError('seed must be a non-negative integer, got {!r}'.format(seed))
    count, seed = int(count), int(seed)
    cache_dir = os.path.abspath(default_data_dir() if cache_dir is None else cache_dir)
    name = 'photos-s{}-n{}'.format(seed, count)
    root = os.path.join(cache_dir, name)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        lock = open(os.path.join(cache_dir, name + '.lock'), 'a')
    except OSError as exc:
        raise PhotoError('cannot create the photo cache in {} ({}); pass a writable '
                         '--cache-dir'.format(cache_dir, exc)) from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            problem = 'rebuild requested' if rebuild else check(root, count, seed)
            if problem is not None:
                if os.path.exists(root) and not rebuild:
                    warnings.warn('benchmark photos at {} are damaged ({}); rebuilding'
                                  .format(root, problem), stacklevel=2)
                sources = read_sources(wheel or fetch_wheel(cache_dir))
                _build(cache_dir, name, root, sources, count, seed)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    with open(os.path.join(root, 'manifest.json')) as f:
        manifest = json.load(f)
    return PhotoSet(root=root, list_path=os.path.join(root, 'train.txt'),
                    train_dir=os.path.join(root, 'train'), count=count,
                    num_classes=len(manifest['classes']), manifest=manifest)


def fetch_wheel(cache_dir):
    """Path of scikit-image's wheel in ``<cache_dir>/wheels``, downloaded if absent."""
    wheels = os.path.join(cache_dir, 'wheels')
    found = sorted(glob.glob(os.path.join(wheels, _WHEEL_GLOB)))
    if found:
        return found[0]
    os.makedirs(wheels, exist_ok=True)
    command = [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps',
               '--only-binary=:all:', '-d', wheels, SKIMAGE_REQUIREMENT]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True)
    found = sorted(glob.glob(os.path.join(wheels, _WHEEL_GLOB)))
    if result.returncode != 0 or not found:
        raise PhotoError(
            'could not download the source photographs ({}):\n{}\nRun `{}` where '
            'PyPI is reachable, or pass --wheel PATH to a scikit-image wheel.'.format(
                SKIMAGE_REQUIREMENT, result.stdout.strip(), ' '.join(command)))
    return found[0]


def read_sources(wheel_path):
    """``{name: (PIL image, sha256 of the file)}`` for the SOURCES in the wheel."""
    sources = collections.OrderedDict()
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            members = set(wheel.namelist())
            for name, mode in SOURCES.items():
                member = 'skimage/data/' + name
                if member not in members:
                    continue
                data = wheel.read(member)
                image = Image.open(io.BytesIO(data))
                image = image.convert(mode)   # RGBA/palette variants, if any
                sources[name] = (image, hashlib.sha256(data).hexdigest())
    except (OSError, zipfile.BadZipFile) as exc:
        raise PhotoError('cannot read {} as a wheel: {}'.format(wheel_path, exc)) from exc
    if not any(SOURCES[name] == 'RGB' for name in sources):
        raise PhotoError('{} holds none of the colour photographs {}; pass a {} wheel'
                         .format(wheel_path, [n for n, m in SOURCES.items() if m == 'RGB'],
                                 SKIMAGE_REQUIREMENT))
    return sources


def sample_size(rng):
    """A target (width, height) from the mixture in the module docstring."""
    u = rng.random()
    if u < 0.58:
        long_side = 500
        short = int(rng.choice([375, 333, 500, 400], p=[0.6, 0.2, 0.1, 0.1]))
    else:
        if u < 0.93:
            long_side = int(rng.integers(300, 800))
        elif u < 0.97:
            long_side = int(rng.integers(1000, 1601))
        else:
            long_side = int(rng.integers(120, 300))
        short = max(1, int(round(long_side * rng.uniform(0.56, 1.0))))
    if rng.random() < 0.25:
        return short, long_side
    return long_side, short


def make_photo(source, size, rng):
    """Random crop of `source` at the aspect ratio of `size`, maybe flipped, resized."""
    width, height = size
    src_w, src_h = source.size
    aspect = width / height
    box_w, box_h = (src_w, src_w / aspect) if src_w / src_h <= aspect else (
        src_h * aspect, src_h)
    scale = rng.uniform(0.7, 1.0)   # side fraction: half of the box (area) up to all of it
    box_w, box_h = max(1.0, box_w * scale), max(1.0, box_h * scale)
    left = rng.uniform(0, src_w - box_w)
    top = rng.uniform(0, src_h - box_h)
    image = source.resize((width, height), Image.BICUBIC,
                          box=(left, top, left + box_w, top + box_h))
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image


def _plan(sources, count, seed):
    """Per image: (source name, target size, output mode, JPEG quality, generator)."""
    rng = numpy.random.default_rng([seed, 13])
    names = list(sources)
    colour = [n for n in names if SOURCES[n] == 'RGB']
    n_grey = max(1, int(round(GREY_SHARE * count)))
    n_cmyk = max(1, int(round(CMYK_SHARE * count)))
    order = rng.permutation(count)
    modes = ['RGB'] * count
    for i in order[:n_grey]:
        modes[i] = 'L'
    for i in order[n_grey:n_grey + n_cmyk]:
        modes[i] = 'CMYK'
    plan = []
    for i in range(count):
        # A greyscale JPEG may come from any source; colour ones from colour sources.
        pool = names if modes[i] == 'L' else colour
        name = pool[int(rng.integers(len(pool)))]
        size = sample_size(rng)
        quality = int(rng.integers(85, 96))
        plan.append((name, size, modes[i], quality,
                     numpy.random.default_rng([seed, 17, i])))
    return plan


def _sha256_file(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def check(root, count, seed):
    """None if the cached set at `root` is intact for (count, seed), else the problem."""
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
        for key, want in (('format', _FORMAT), ('seed', seed), ('count', count)):
            if manifest[key] != want:
                return 'manifest {} is {!r}, expected {!r}'.format(key, manifest[key], want)
        list_path = os.path.join(root, 'train.txt')
        if not os.path.isfile(list_path):
            return 'train.txt missing'
        if _sha256_file(list_path) != manifest['list_sha256']:
            return 'train.txt changed'
        if len(manifest['files']) != count:
            return 'manifest lists {} files, expected {}'.format(len(manifest['files']), count)
        for relative, size in manifest['files'].items():
            try:
                actual = os.stat(os.path.join(root, relative)).st_size
            except OSError:
                return '{} missing'.format(relative)
            if actual != size:
                return '{} has {} bytes, expected {}'.format(relative, actual, size)
    except (KeyError, TypeError, AttributeError) as exc:
        return 'manifest.json malformed: {!r}'.format(exc)
    return None


def _build(cache_dir, name, root, sources, count, seed):
    for leftover in glob.glob(os.path.join(cache_dir, name + '.tmp-*')):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = tempfile.mkdtemp(prefix=name + '.tmp-', dir=cache_dir)
    try:
        plan = _plan(sources, count, seed)
        # Class k is the k-th source in sorted order, as FolderDataset and
        # ImageFolder number the class folders; sources no image came from
        # get no folder (FolderDataset refuses empty ones).
        classes = sorted({source.split('.')[0] for source, *_ in plan})
        files, lines, pixels = collections.OrderedDict(), [], []
        modes = collections.Counter()
        for i, (source, size, mode, quality, rng) in enumerate(plan):
            image = make_photo(sources[source][0], size, rng).convert(mode)
            label = classes.index(source.split('.')[0])
            relative = 'train/{}/{:05d}.JPEG'.format(classes[label], i)
            os.makedirs(os.path.dirname(os.path.join(staging, relative)), exist_ok=True)
            encoded = io.BytesIO()
            image.save(encoded, format='JPEG', quality=quality)
            with open(os.path.join(staging, relative), 'wb') as f:
                f.write(encoded.getvalue())
            files[relative] = len(encoded.getvalue())
            lines.append('{} {}\n'.format(relative, label))
            pixels.append(size)
            modes[mode] += 1
        list_path = os.path.join(staging, 'train.txt')
        with open(list_path, 'w', encoding='utf-8') as f:
            f.writelines(lines)
        sizes = numpy.array(pixels)
        manifest = {
            'format': _FORMAT, 'seed': seed, 'count': count,
            'source': SKIMAGE_REQUIREMENT + ' wheel, skimage/data/',
            'sources': {n: sha for n, (_, sha) in sources.items()},
            'classes': classes,
            'list_sha256': _sha256_file(list_path),
            'files': files,
            'stats': {
                'modes': dict(modes),
                'long_side_ge_1000': int((sizes.max(axis=1) >= 1000).sum()),
                'median_long_short': [int(numpy.median(sizes.max(axis=1))),
                                      int(numpy.median(sizes.min(axis=1)))],
                'mean_pixels': int(numpy.prod(sizes, axis=1).mean()),
                'mean_bytes': int(numpy.mean(list(files.values()))),
                'sizes_500': int((sizes.max(axis=1) == 500).sum()),
            },
        }
        publish_staged(staging, root, manifest, prefix=name + '.tmp-', sort_keys=False)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def describe(photos):
    """One line of facts about a PhotoSet."""
    s = photos.manifest['stats']
    return ('{} JPEGs in {} classes at {}: {} with long side 500, {} with long side '
            '>= 1000 px, median long x short side {}x{}, mean {:.3f} Mpixel, mean {:.0f} KB; '
            'modes {}'
            .format(photos.count, photos.num_classes, photos.root, s['sizes_500'],
                    s['long_side_ge_1000'], s['median_long_short'][0], s['median_long_short'][1],
                    s['mean_pixels'] / 1e6, s['mean_bytes'] / 1e3,
                    ', '.join('{} {}'.format(k, v) for k, v in sorted(s['modes'].items()))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--count', type=int, default=512)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--cache-dir', help='default: the demo data cache folder')
    p.add_argument('--wheel', help='a scikit-image wheel to read instead of downloading one')
    p.add_argument('--rebuild', action='store_true')
    args = p.parse_args(argv)
    try:
        photos = photo_set(args.count, args.seed, args.cache_dir, args.wheel, args.rebuild)
    except PhotoError as exc:
        print('photos.py: {}'.format(exc), file=sys.stderr)
        return 1
    print(describe(photos))
    print('list file: {}'.format(photos.list_path))
    return 0


if __name__ == '__main__':
    sys.exit(main())
