"""The ILSVRC-2012 development kit: the classes and the validation labels.

``ILSVRC2012_devkit_t12.tar.gz`` holds the two files :mod:`prepare
<chainer_resnet.data.prepare>` needs:

- ``ILSVRC2012_devkit_t12/data/meta.mat``: a MATLAB v5 MAT-file with one
  variable, ``synsets``, a struct array with the fields ``ILSVRC2012_ID``,
  ``WNID``, ``words``, ``gloss``, ``num_children``, ``children``,
  ``wordnet_height`` and ``num_train_images``. The 1,000 classes are the
  leaves (``num_children`` 0, ids 1 to 1,000); the other synsets are their
  ancestors in WordNet;
- ``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt``: one
  ``ILSVRC2012_ID`` per line, line ``k`` for ``ILSVRC2012_val_<k>.JPEG``.

:func:`read_mat` reads the subset of the MAT-file format such a file uses
(numeric, character, cell and struct arrays, optionally zlib-compressed as
MATLAB's default ``-v7`` writes them), so that SciPy is not needed for a
file of 1,860 records (benchmarks/README.md, "ImageNet from its archives":
SciPy's ``loadmat`` is a 35 MB wheel and, with its import, no faster; and
chainer imports ``scipy.special`` whenever SciPy is installed). Format
reference: MathWorks, "MAT-File Format" (MATLAB 7 documentation), chapter 1.

Validation labels can also come from a plain text file of ``file wnid``
lines (:func:`read_label_file`), as some copies of ImageNet ship with.
"""

import collections
import os
import re
import struct
import tarfile
import zlib

import numpy

from chainer_resnet.data.layouts import DatasetError

META_PATH = 'data/meta.mat'
"""Where ``meta.mat`` lies inside the devkit's top folder."""

GROUND_TRUTH_PATH = 'data/ILSVRC2012_validation_ground_truth.txt'
"""Where the validation ground truth lies inside the devkit's top folder."""

VAL_NAME = re.compile(r'ILSVRC2012_val_(\d{8})\.JPEG')
"""Names of the validation images; the number is the ground-truth line."""

Synset = collections.namedtuple(
    'Synset', 'ilsvrc_id wnid words num_children num_train_images')
Synset.__doc__ = """One record of ``meta.mat``'s ``synsets`` (the fields used here)."""

Devkit = collections.namedtuple('Devkit', 'path synsets ground_truth')
Devkit.__doc__ = """What :func:`read_devkit` read: ``synsets`` (list of
:class:`Synset`, file order) and ``ground_truth`` (list of int ILSVRC2012 ids,
validation image 1 first)."""

# MAT-file data types (the format's table 1-1) and array classes (table 1-3).
_MI_DTYPES = {1: 'i1', 2: 'u1', 3: 'i2', 4: 'u2', 5: 'i4', 6: 'u4', 7: 'f4', 9: 'f8',
              12: 'i8', 13: 'u8'}
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_TEXT_CODECS = {1: 'latin-1', 2: 'latin-1', 4: 'utf-16', 16: 'utf-8', 17: 'utf-16',
                18: 'utf-32'}
_MX_CELL, _MX_STRUCT, _MX_CHAR = 1, 2, 4
_MX_DTYPES = {6: 'f8', 7: 'f4', 8: 'i1', 9: 'u1', 10: 'i2', 11: 'u2', 12: 'i4', 13: 'u4',
              14: 'i8', 15: 'u8'}
_COMPLEX_FLAG = 0x800


class _MatReader:
    """Data elements of one MAT-file, in the file's byte order."""

    def __init__(self, source, order):
        self.source = source
        self.order = order

    def fail(self, problem):
        raise DatasetError('{} is not a MAT-file this reader understands: {}. Is it the '
                           'devkit\'s meta.mat?'.format(self.source, problem))

    def element(self, buf, pos):
        """``(type, payload, next position)`` of the data element at ``pos``."""
        if pos + 8 > len(buf):
            self.fail('truncated at byte {}'.format(pos))
        mtype, nbytes = struct.unpack_from(self.order + 'II', buf, pos)
        if mtype >> 16:
            # Small data element: type and size share the first word and up
            # to 4 bytes of data fill the second.
            mtype, nbytes = mtype & 0xFFFF, mtype >> 16
            if nbytes > 4:
                self.fail('a small data element of {} bytes'.format(nbytes))
            return mtype, buf[pos + 4:pos + 4 + nbytes], pos + 8
        start, end = pos + 8, pos + 8 + nbytes
        if end > len(buf):
            self.fail('truncated: an element of {} bytes at byte {}'.format(nbytes, pos))
        # Elements are padded to 8 bytes, except compressed ones.
        following = end if mtype == _MI_COMPRESSED else start + (nbytes + 7) // 8 * 8
        return mtype, buf[start:end], following

    def variables(self, buf, pos):
        """``{name: value}`` of the top-level elements from ``pos`` on."""
        found = {}
        while pos < len(buf):
            mtype, payload, pos = self.element(buf, pos)
            if mtype == _MI_COMPRESSED:
                try:
                    payload = zlib.decompress(payload)
                except zlib.error as exc:
                    self.fail('a compressed element does not decompress ({})'.format(exc))
                found.update(self.variables(payload, 0))
            elif mtype == _MI_MATRIX:
                name, value = self.matrix(payload)
                found[name] = value
            else:
                self.fail('a top-level element of type {}'.format(mtype))
        return found

    def numbers(self, buf, pos, what):
        mtype, payload, pos = self.element(buf, pos)
        if mtype not in _MI_DTYPES:
            self.fail('{} stored as type {}'.format(what, mtype))
        return numpy.frombuffer(payload, self.order + _MI_DTYPES[mtype]), pos

    def words(self, buf, pos, what):
        """Like :meth:`numbers` for the int32/uint32 header fields, as a tuple
        (struct is ~10x faster than NumPy on arrays of one or two numbers)."""
        mtype, payload, pos = self.element(buf, pos)
        if mtype not in (5, 6) or len(payload) % 4:
            self.fail('{} stored as type {}'.format(what, mtype))
        code = 'i' if mtype == 5 else 'I'
        return struct.unpack('{}{}{}'.format(self.order, len(payload) // 4, code), payload), pos

    def matrix(self, buf):
        """``(name, value)`` of an miMATRIX payload (array flags, dimensions,
        name, then the data of its class)."""
        if not buf:
            return '', None             # an empty matrix may have no subelements
        flags, pos = self.words(buf, 0, 'array flags')
        shape, pos = self.words(buf, pos, 'dimensions')
        mtype, name, pos = self.element(buf, pos)
        name = name.decode('latin-1')
        array_class, count = flags[0] & 0xFF, 1
        for extent in shape:
            count *= extent
        if flags[0] & _COMPLEX_FLAG:
            self.fail('variable {!r} is complex'.format(name))
        if count == 0 and pos >= len(buf) and array_class in _MX_DTYPES:
            return name, numpy.zeros(shape, _MX_DTYPES[array_class])   # no data element
        if count == 0 and pos >= len(buf) and array_class == _MX_CHAR:
            return name, ''
        if array_class in _MX_DTYPES:
            real, pos = self.numbers(buf, pos, 'numbers')
            if real.size != count:
                self.fail('{} numbers for a {} array'.format(real.size, shape))
            return name, real.astype(_MX_DTYPES[array_class]).reshape(shape, order='F')
        if array_class == _MX_CHAR:
            mtype, payload, pos = self.element(buf, pos)
            if mtype not in _TEXT_CODECS:
                self.fail('characters stored as type {}'.format(mtype))
            codec = _TEXT_CODECS[mtype]
            if codec in ('utf-16', 'utf-32'):
                codec += '-le' if self.order == '<' else '-be'
            try:
                text = payload.decode(codec)
            except UnicodeDecodeError as exc:
                self.fail('characters that are not {} ({})'.format(codec, exc))
            rows = shape[0] if count else 0
            if rows <= 1:
                return name, text
            return name, [text[r::rows] for r in range(rows)]  # column-major
        if array_class == _MX_CELL:
            items = []
            for _ in range(count):
                mtype, payload, pos = self.element(buf, pos)
                items.append(self.matrix(payload)[1])
            return name, items
        if array_class == _MX_STRUCT:
            (length,), pos = self.words(buf, pos, 'field name length')
            mtype, names, pos = self.element(buf, pos)
            fields = [names[i:i + length].split(b'\0', 1)[0].decode('latin-1')
                      for i in range(0, len(names), length)] if length else []
            records = []
            for _ in range(count):
                record = {}
                for field in fields:
                    mtype, payload, pos = self.element(buf, pos)
                    if mtype != _MI_MATRIX:
                        self.fail('field {!r} stored as type {}'.format(field, mtype))
                    record[field] = self.matrix(payload)[1]
                records.append(record)
            return name, records
        self.fail('variable {!r} is of array class {} (sparse, object or function '
                  'handle)'.format(name, array_class))


def read_mat(data, source='meta.mat'):
    """The variables of a MATLAB v5/v7 MAT-file, as Python values.

    Numeric arrays become NumPy arrays of their MATLAB class and shape;
    character arrays ``str`` (one row) or a list of row strings; cell arrays
    lists; struct arrays lists of ``{field: value}`` dicts. Multi-dimensional
    cell and struct arrays are flattened in MATLAB's (column-major) order.

    Args:
        data (bytes): the file's contents.
        source (str): the file's name, for error messages.

    Raises:
        DatasetError: not a v5/v7 MAT-file (v7.3 is HDF5), truncated, or
            using what this reader does not read (complex, sparse, objects).
    """
    reader = _MatReader(source, '<')
    if len(data) < 128 or not data.startswith(b'MATLAB'):
        reader.fail('no MATLAB MAT-file header')
    if data[126:128] not in (b'IM', b'MI'):
        reader.fail('no endian indicator in the header')
    reader.order = '<' if data[126:128] == b'IM' else '>'
    version = struct.unpack_from(reader.order + 'H', data, 124)[0]
    if version != 0x0100:
        reader.fail('version 0x{:04x} (MATLAB -v7.3 files are HDF5; save with -v7)'
                    .format(version))
    return reader.variables(data, 128)


def _integer(value, field, source, index):
    array = numpy.asarray(value)
    if array.size != 1 or array.dtype.kind not in 'iuf' or array.flat[0] != int(array.flat[0]):
        raise DatasetError('{}: synsets({}).{} is {!r}, not one whole number'.format(
            source, index + 1, field, value))
    return int(array.flat[0])


def synsets_of(variables, source='meta.mat'):
    """The :class:`Synset` records of a ``meta.mat`` read by :func:`read_mat`."""
    records = variables.get('synsets')
    if not isinstance(records, list) or not records:
        raise DatasetError('{} has no struct array "synsets" (variables: {}). Is it the '
                           'ILSVRC-2012 devkit\'s data/meta.mat?'.format(
                               source, ', '.join(sorted(variables)) or 'none'))
    synsets = []
    for index, record in enumerate(records):
        missing = {'ILSVRC2012_ID', 'WNID', 'words', 'num_children',
                   'num_train_images'} - set(record)
        if missing:
            raise DatasetError('{}: synsets has no field {}. Is it the ILSVRC-2012 devkit\'s '
                               'data/meta.mat?'.format(source, ', '.join(sorted(missing))))
        if not isinstance(record['WNID'], str) or not isinstance(record['words'], str):
            raise DatasetError('{}: synsets({}).WNID or .words is not text'.format(
                source, index + 1))
        synsets.append(Synset(
            _integer(record['ILSVRC2012_ID'], 'ILSVRC2012_ID', source, index),
            record['WNID'], record['words'],
            _integer(record['num_children'], 'num_children', source, index),
            _integer(record['num_train_images'], 'num_train_images', source, index)))
    return synsets


def leaf_classes(synsets):
    """``{ILSVRC2012_ID: Synset}`` of the classes: the synsets without children."""
    return {s.ilsvrc_id: s for s in synsets if s.num_children == 0}


def _parse_ground_truth(text, source):
    ids = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            ids.append(int(line))
        except ValueError:
            raise DatasetError('{}, line {}: {!r} is not an ILSVRC2012_ID (one whole number '
                               'per line)'.format(source, number, line)) from None
    return ids


def read_devkit(path):
    """Read ``meta.mat`` and the validation ground truth of a devkit.

    Args:
        path (str): ``ILSVRC2012_devkit_t12.tar.gz`` (any compression tar
            reads), or the folder it was unpacked into (the one holding
            ``data/``, or its parent).

    Raises:
        DatasetError: the path or one of the two files is missing or
            malformed.
    """
    wanted = {META_PATH: None, GROUND_TRUTH_PATH: None}
    if os.path.isdir(path):
        for top in (path, os.path.join(path, 'ILSVRC2012_devkit_t12')):
            for relative in wanted:
                candidate = os.path.join(top, relative)
                if wanted[relative] is None and os.path.isfile(candidate):
                    with open(candidate, 'rb') as f:
                        wanted[relative] = f.read()
    elif os.path.isfile(path):
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    for relative in wanted:
                        if member.isfile() and ('/' + member.name).endswith('/' + relative):
                            wanted[relative] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DatasetError('cannot read the devkit archive {} ({}: {}). Pass '
                               'ILSVRC2012_devkit_t12.tar.gz as downloaded, or the folder it '
                               'was unpacked into.'.format(path, type(exc).__name__, exc)
                               ) from None
    else:
        raise DatasetError('devkit {} does not exist. Pass ILSVRC2012_devkit_t12.tar.gz or '
                           'the folder it was unpacked into.'.format(path))
    missing = [relative for relative, data in wanted.items() if data is None]
    if missing:
        raise DatasetError('devkit {} has no {}: is it ILSVRC2012_devkit_t12?'.format(
            path, ' and no '.join(missing)))
    meta_source = '{} ({})'.format(META_PATH, path)
    synsets = synsets_of(read_mat(wanted[META_PATH], meta_source), meta_source)
    truth_source = '{} ({})'.format(GROUND_TRUTH_PATH, path)
    try:
        text = wanted[GROUND_TRUTH_PATH].decode('ascii')
    except UnicodeDecodeError:
        raise DatasetError('{} is not a text file of numbers'.format(truth_source)) from None
    return Devkit(path, synsets, _parse_ground_truth(text, truth_source))


def devkit_labels(devkit, names):
    """``{file name: wnid}`` for the validation images called ``names``.

    Image ``ILSVRC2012_val_<k>.JPEG`` is line ``k`` of the ground truth,
    mapped to a WordNet id through the leaf synsets of ``meta.mat``.

    Raises:
        DatasetError: a name that is not ``ILSVRC2012_val_<8 digits>.JPEG``,
            a number beyond the ground truth, or an id that is not a class.
    """
    classes = leaf_classes(devkit.synsets)
    truth = devkit.ground_truth
    labels = {}
    for name in names:
        match = VAL_NAME.fullmatch(name)
        if not match:
            raise DatasetError(
                'validation image {} is not named ILSVRC2012_val_<8 digits>.JPEG, so the '
                'devkit\'s ground truth (one line per image in that order) cannot label it. '
                'Pass a "file wnid" label file with --val-labels instead.'.format(name))
        number = int(match.group(1))
        if not 1 <= number <= len(truth):
            raise DatasetError('validation image {} has no line in the devkit\'s ground truth '
                               '({} lines, {}). Is it the ILSVRC-2012 devkit?'.format(
                                   name, len(truth), devkit.path))
        synset = classes.get(truth[number - 1])
        if synset is None:
            raise DatasetError(
                'the devkit\'s ground truth labels {} with ILSVRC2012_ID {}, which is not one '
                'of the {} classes of its meta.mat (synsets without children) ({})'.format(
                    name, truth[number - 1], len(classes), devkit.path))
        labels[name] = synset.wnid
    return labels


def read_label_file(path):
    """``{file name: wnid}`` from a text file of ``file wnid`` lines.

    Blank lines are skipped; the file name is compared without its folder.

    Raises:
        DatasetError: the file is missing, a line does not have two fields,
            or a file is named twice.
    """
    if not os.path.isfile(path):
        raise DatasetError('validation label file {} does not exist. Pass a text file of '
                           '"file wnid" lines.'.format(path))
    labels = {}
    with open(path, encoding='utf-8-sig') as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise DatasetError('{}, line {}: expected 2 fields "file wnid", got {!r}'
                                   .format(path, number, line.rstrip('\n')))
            name = os.path.basename(fields[0])
            if name in labels:
                raise DatasetError('{}, line {}: {} is labelled twice'.format(
                    path, number, name))
            labels[name] = fields[1]
    if not labels:
        raise DatasetError('validation label file {} has no "file wnid" lines'.format(path))
    return labels
