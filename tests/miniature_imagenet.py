"""A miniature of ImageNet's official archives, in their formats, for the tests.

A plain tar of ``<wnid>.tar`` class archives holding ``<wnid>_<n>.JPEG``
files, a flat tar of ``ILSVRC2012_val_<k>.JPEG`` files, and a ``.tar.gz``
devkit whose ``meta.mat`` is written as MATLAB writes it (below: a writer
from the format's specification) with the real file's struct fields, leaf
and inner synsets, and ILSVRC2012 ids in another order than the sorted
WordNet ids.
Its odd files are ImageNet's: a CMYK JPEG, a grayscale JPEG and a PNG named
``.JPEG``. :func:`build_miniature` returns which class every image belongs
to: the tests' oracle for labels.
"""

import collections
import io
import os
import struct
import tarfile
import zlib

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


# --- meta.mat, as MATLAB writes it -------------------------------------------------------
# A writer of the MAT-file format from its specification (MathWorks, "MAT-File
# Format", MATLAB 7 documentation, chapter 1), independent of the reader in
# chainer_resnet.data.devkit, and writing what MATLAB writes: characters as
# UTF-16 (miUINT16), doubles stored in the smallest integer type that holds
# them, each variable zlib-compressed (-v7, MATLAB's default) or not (-v6).
# Not SciPy's savemat: chainer imports scipy.special when SciPy is installed,
# so SciPy in the tested stack would change what every other test runs.

MI_INT8, MI_UINT8, MI_UINT16, MI_INT32, MI_UINT32, MI_DOUBLE = 1, 2, 4, 5, 6, 9
MI_MATRIX, MI_COMPRESSED = 14, 15
MX_STRUCT, MX_CHAR, MX_DOUBLE = 2, 4, 6
META_FIELDS = ('ILSVRC2012_ID', 'WNID', 'words', 'gloss', 'num_children', 'children',
               'wordnet_height', 'num_train_images')


def mat_element(order, mtype, payload, small=True):
    """A data element: up to 4 bytes in the small format (the size in the upper
    half of the type word), otherwise an 8-byte tag and the data padded to a
    multiple of 8 bytes."""
    if small and len(payload) <= 4:
        return struct.pack(order + 'I', len(payload) << 16 | mtype) + payload.ljust(4, b'\0')
    return struct.pack(order + 'II', mtype, len(payload)) + payload + bytes(-len(payload) % 8)


def mat_matrix(order, array_class, dims, body, name=''):
    """An miMATRIX element: array flags, dimensions, name, then ``body``."""
    flags = mat_element(order, MI_UINT32, struct.pack(order + 'II', array_class, 0))
    shape = mat_element(order, MI_INT32, struct.pack(order + '2i', *dims))
    return mat_element(order, MI_MATRIX, flags + shape + mat_element(order, MI_INT8, name.encode())
                       + body, small=False)


def mat_text(order, value):
    codec = 'utf-16-le' if order == '<' else 'utf-16-be'
    return mat_matrix(order, MX_CHAR, (1, len(value)),
                      mat_element(order, MI_UINT16, value.encode(codec)))


def mat_doubles(order, values):
    """A 1 x n double array, stored as MATLAB stores whole numbers."""
    values = [int(v) for v in values]
    if all(0 <= v < 256 for v in values):
        payload, mtype = bytes(values), MI_UINT8
    elif all(0 <= v < 65536 for v in values):
        payload, mtype = struct.pack(order + '{}H'.format(len(values)), *values), MI_UINT16
    else:
        payload, mtype = struct.pack(order + '{}d'.format(len(values)), *values), MI_DOUBLE
    return mat_matrix(order, MX_DOUBLE, (1, len(values)),
                      mat_element(order, mtype, payload, small=bool(values)))


def meta_mat_bytes(records, order='<', compress=True):
    """A MAT-file holding ``synsets``, a struct array (n x 1) of ``records``:
    tuples in the order of :data:`META_FIELDS`."""
    body = mat_element(order, MI_INT32, struct.pack(order + 'i', 32))
    body += mat_element(order, MI_INT8, b''.join(f.encode().ljust(32, b'\0')
                                                 for f in META_FIELDS))
    for ilsvrc_id, wnid, words, gloss, children, height, count in records:
        body += (mat_doubles(order, [ilsvrc_id]) + mat_text(order, wnid)
                 + mat_text(order, words) + mat_text(order, gloss)
                 + mat_doubles(order, [len(children)]) + mat_doubles(order, children)
                 + mat_doubles(order, [height]) + mat_doubles(order, [count]))
    variable = mat_matrix(order, MX_STRUCT, (len(records), 1), body, name='synsets')
    if compress:
        packed = zlib.compress(variable)
        variable = struct.pack(order + 'II', MI_COMPRESSED, len(packed)) + packed
    header = b'MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: Tue Jun  5 10:00:00 2012'
    return header.ljust(116) + bytes(8) + struct.pack(order + 'HH', 0x0100, 0x4D49) + variable


def meta_records(leaves=LEAVES, counts=TRAIN_COUNTS):
    """The synsets of the miniature's meta.mat: the leaves, then the inner synsets."""
    records = [(i, wnid, 'words of {}'.format(wnid), 'the gloss of {}'.format(wnid), [], 0,
                counts.get(wnid, 0)) for i, wnid in sorted(leaves.items())]
    return records + [(i, wnid, words, 'an inner synset', kids, 2, 0)
                      for i, wnid, words, kids in INNER]


def write_meta(path, leaves=LEAVES, counts=TRAIN_COUNTS, compress=True, order='<'):
    """meta.mat as the devkit has it."""
    with open(path, 'wb') as f:
        f.write(meta_mat_bytes(meta_records(leaves, counts), order, compress))


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
