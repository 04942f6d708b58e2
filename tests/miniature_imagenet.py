"""A miniature of ImageNet's official archives, in their formats, for the tests.

A plain tar of ``<wnid>.tar`` class archives holding ``<wnid>_<n>.JPEG``
files, a flat tar of ``ILSVRC2012_val_<k>.JPEG`` files, and a ``.tar.gz``
devkit whose ``meta.mat`` is written by SciPy's ``savemat`` (an independent
writer of the MAT format) with the real file's struct fields, leaf and inner
synsets, and ILSVRC2012 ids in another order than the sorted WordNet ids.
Its odd files are ImageNet's: a CMYK JPEG, a grayscale JPEG and a PNG named
``.JPEG``. :func:`build_miniature` returns which class every image belongs
to: the tests' oracle for labels.
"""

import collections
import io
import os
import tarfile

import numpy
from PIL import Image

from chainer_resnet.data import devkit

# ILSVRC2012_ID -> wnid of the leaf classes: ids in another order than the
# sorted wnids, as in the real devkit (id 1 is n02119789, kit fox).
LEAVES = {1: 'n02119789', 2: 'n01443537', 3: 'n09999999', 4: 'n01440764'}
CLASSES = sorted(LEAVES.values())       # label k is CLASSES[k]
TRAIN_COUNTS = {'n01440764': 6, 'n01443537': 5, 'n02119789': 7, 'n09999999': 4}
VAL_PER_CLASS = 3
# Inner synsets (num_children > 0), as meta.mat lists after the leaves.
INNER = [(5, 'n00001740', 'entity', [6]), (6, 'n00002684', 'object, physical object',
                                           [1, 2, 3, 4])]

Miniature = collections.namedtuple('Miniature', 'train_tar val_tar devkit files val_truth')


def _photo(rng, width, height):
    """A smooth random image (JPEG compresses it well; resizing keeps it close)."""
    y, x = numpy.mgrid[0:height, 0:width].astype(numpy.float64)
    corners = rng.uniform(0, 255, size=(4, 3))
    u, v = (x / max(width - 1, 1))[..., None], (y / max(height - 1, 1))[..., None]
    pixels = ((1 - u) * (1 - v) * corners[0] + u * (1 - v) * corners[1]
              + (1 - u) * v * corners[2] + u * v * corners[3])
    return Image.fromarray(pixels.round().astype(numpy.uint8))


def _encode(image, format='JPEG', **options):
    out = io.BytesIO()
    image.save(out, format=format, **options)
    return out.getvalue()


def tar_bytes(files):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode='w', format=tarfile.GNU_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1338000000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_meta(path, leaves=LEAVES, counts=TRAIN_COUNTS, compress=True):
    """meta.mat as the devkit has it, written by SciPy."""
    import scipy.io
    fields = ('ILSVRC2012_ID', 'WNID', 'words', 'gloss', 'num_children', 'children',
              'wordnet_height', 'num_train_images')
    rows = [(i, wnid, 'words of {}'.format(wnid), 'the gloss of {}'.format(wnid), 0, [], 0,
             counts.get(wnid, 0)) for i, wnid in sorted(leaves.items())]
    rows += [(i, wnid, words, 'an inner synset', len(kids), kids, 2, 0)
             for i, wnid, words, kids in INNER]
    synsets = numpy.zeros((len(rows), 1), dtype=[(f, 'O') for f in fields])
    for k, (i, wnid, words, gloss, n_kids, kids, height, n_train) in enumerate(rows):
        synsets[k, 0] = (numpy.array([[float(i)]]), wnid, words, gloss,
                         numpy.array([[float(n_kids)]]),
                         numpy.array([[float(c) for c in kids]]).reshape(1, len(kids)),
                         numpy.array([[float(height)]]), numpy.array([[float(n_train)]]))
    scipy.io.savemat(path, {'synsets': synsets}, do_compression=compress)


def write_devkit(path, ground_truth, folder, **meta_options):
    meta = os.path.join(folder, 'meta.mat')
    write_meta(meta, **meta_options)
    with open(meta, 'rb') as f:
        meta_bytes = f.read()
    top = 'ILSVRC2012_devkit_t12/'
    with tarfile.open(path, 'w:gz') as tar:
        for name, data in ((top + 'readme.txt', b'devkit\n'),
                           (top + devkit.META_PATH, meta_bytes),
                           (top + devkit.GROUND_TRUTH_PATH,
                            ''.join('{}\n'.format(i) for i in ground_truth).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def build_miniature(folder, seed=0):
    """The three archives in ``folder``; ``files``: {(split, wnid, name): bytes}."""
    os.makedirs(folder, exist_ok=True)
    rng = numpy.random.default_rng(seed)
    files = {}
    inner = []
    for wnid in sorted(TRAIN_COUNTS):
        members = []
        for n in range(TRAIN_COUNTS[wnid]):
            name = '{}_{}.JPEG'.format(wnid, 100 + 7 * n)
            image = _photo(rng, int(rng.integers(20, 60)), int(rng.integers(20, 60)))
            if wnid == 'n01440764' and n == 0:
                data = _encode(image.convert('CMYK'))          # 22 of these in ImageNet
            elif wnid == 'n01440764' and n == 1:
                data = _encode(image.convert('L'))
            elif wnid == 'n02119789' and n == 2:
                data = _encode(image, 'PNG')                   # n02105855_2933.JPEG
            else:
                data = _encode(image, quality=int(rng.integers(80, 96)))
            members.append((name, data))
            files['train', wnid, name] = data
        inner.append((wnid + '.tar', tar_bytes(members)))
    train_tar = os.path.join(folder, 'ILSVRC2012_img_train.tar')
    with open(train_tar, 'wb') as f:
        f.write(tar_bytes(inner))
    ids = {wnid: i for i, wnid in LEAVES.items()}
    order = [w for w in CLASSES for _ in range(VAL_PER_CLASS)]
    order = [order[i] for i in rng.permutation(len(order))]
    val, truth = [], {}
    for k, wnid in enumerate(order, start=1):
        name = 'ILSVRC2012_val_{:08d}.JPEG'.format(k)
        image = _photo(rng, int(rng.integers(20, 60)), int(rng.integers(20, 60)))
        data = _encode(image.convert('CMYK') if k == 2 else image)
        val.append((name, data))
        files['val', wnid, name] = data
        truth[name] = wnid
    val_tar = os.path.join(folder, 'ILSVRC2012_img_val.tar')
    with open(val_tar, 'wb') as f:
        f.write(tar_bytes(val))
    kit = os.path.join(folder, 'ILSVRC2012_devkit_t12.tar.gz')
    write_devkit(kit, [ids[truth[name]] for name, _ in val], folder)
    return Miniature(train_tar, val_tar, kit, files, truth)
