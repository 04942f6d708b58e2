"""ImageNet's image archives, read in place: indexes, and one class at a time.

``ILSVRC2012_img_train.tar`` is a plain tar of 1,000 tars, ``<wnid>.tar``,
each holding that class's ``<wnid>_<n>.JPEG`` files; ``ILSVRC2012_img_val.tar``
a plain tar of 50,000 JPEGs. Neither is unpacked: :func:`index_archive` reads
the headers once (one 512-byte read per member) and notes where each member's
data lies, and :func:`extract_class` then reads one class's images at those
offsets - an inner tar through a window onto the outer file - and writes
them, as they are or pre-resized (:class:`Converter`), into a folder. So
any number of processes read one archive in parallel, and nothing but the
output is written: no second copy of the data on disk.

An archive is checked before anything is written: every member's data must
lie inside the file and the last one must be followed by tar's end-of-archive
block, so that an archive cut short anywhere - also exactly between two
members, where Python's :mod:`tarfile` just stops - is an error that names it.
"""

import collections
import io
import os
import re
import tarfile

from PIL import Image

from chainer_resnet.data.layouts import IMAGE_EXTENSIONS, DatasetError
from chainer_resnet.data.transforms import shorter_side_size

Member = collections.namedtuple('Member', 'name offset size')
Member.__doc__ = """A regular file in a tar: its name, where its data starts
in the archive, and its size in bytes."""

Task = collections.namedtuple('Task', 'split name archive members folder')
Task.__doc__ = """One class folder to write: ``split`` (``'train'`` or
``'val'``), the class ``name``, the outer ``archive`` path, ``members`` (for
``'train'`` the one inner tar, for ``'val'`` the class's images) and the
``folder`` to write into (created by :func:`extract_class`)."""

Result = collections.namedtuple('Result', 'task images bytes_read bytes_written')
Result.__doc__ = """What :func:`extract_class` did for one :class:`Task`."""

# The transforms' filter (Pillow >= 9.1 moved it into Image.Resampling).
_BILINEAR = getattr(Image, 'Resampling', Image).BILINEAR
_BLOCK = 512
_AGAIN = 'Download it again, or check it against its published MD5 sum.'
_SPACE = re.compile(r'\s')
# Reads from the archives: large enough that an inner tar streams, not seeks.
_BUFFER = 1 << 20


class _Window(io.RawIOBase):
    """Bytes ``[start, start + size)`` of an open file, as a file of its own."""

    def __init__(self, f, start, size):
        super().__init__()
        self._f, self._start, self._size, self._pos = f, start, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, pos, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer):
        n = max(0, min(len(buffer), self._size - self._pos))
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


def _scan(fileobj, size, where, read=False):
    """``(member, data)`` for each regular file of the tar in ``fileobj``.

    One pass: ``data`` is the member's bytes if ``read``, else None. The
    members are checked as they come (data inside the ``size`` bytes), the end
    at the end (an end-of-archive block must follow the last member).

    Raises:
        DatasetError: not a tar, a member of another kind than file or
            folder, data beyond the end, or no end-of-archive block.
    """
    last = None
    try:
        with tarfile.open(fileobj=fileobj, mode='r:') as tar:
            for info in tar:
                if info.isdir():
                    continue
                if not info.isfile():
                    raise DatasetError('{}: member {} is not a file (tar type {!r}); the '
                                       'ImageNet archives hold only image files'.format(
                                           where, info.name, info.type))
                if info.offset_data + info.size > size:
                    raise DatasetError(
                        '{} is cut short: member {} needs bytes up to {:,} but the archive '
                        'has {:,}. {}'.format(where, info.name, info.offset_data + info.size,
                                              size, _AGAIN))
                last = Member(info.name, info.offset_data, info.size)
                data = None
                if read:
                    fileobj.seek(last.offset)
                    data = fileobj.read(last.size)
                yield last, data
            end = tar.offset
    except (tarfile.TarError, EOFError) as exc:
        raise DatasetError('{} is damaged or cut short ({}: {}). {}'.format(
            where, type(exc).__name__, exc, _AGAIN)) from None
    fileobj.seek(end)
    if fileobj.read(_BLOCK) != bytes(_BLOCK):
        # Python's tarfile stops without a word at the end of the data or at
        # a damaged header; a whole archive has zeros there.
        after = 'after member {}'.format(last.name) if last else 'at its start'
        raise DatasetError('{} is cut short or damaged: {} comes neither another member nor '
                           'tar\'s end-of-archive block. {}'.format(where, after, _AGAIN))


def index_archive(path):
    """The regular-file members of the uncompressed tar at ``path``.

    One 512-byte read per member (unbuffered: a buffered read would fetch a
    megabyte per header), plus the end-of-archive check.

    Raises:
        DatasetError: the file is missing, not an uncompressed tar, or cut
            short.
    """
    if not os.path.isfile(path):
        raise DatasetError('archive {} does not exist. Pass the path of the file as '
                           'downloaded from image-net.org.'.format(path))
    with open(path, 'rb', buffering=0) as f:
        return [member for member, _ in _scan(f, os.fstat(f.fileno()).st_size,
                                              'archive {}'.format(path))]


def check_image_name(name, where):
    """``name`` if a class folder can hold it as an image both layouts see.

    Raises:
        DatasetError: a hidden name, whitespace (list files split on it), a
            folder separator, or an extension that is not an image's.
    """
    if (not name or name.startswith('.') or _SPACE.search(name) or '/' in name
            or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS):
        raise DatasetError('{}: member {!r} is not an image file name this can write (no '
                           'leading dot, whitespace or folder; extension one of {})'.format(
                               where, name, ' '.join(IMAGE_EXTENSIONS)))
    return name


class Converter:
    """What happens to each image on its way to the output.

    ``resize=None`` copies the file's bytes unchanged (CMYK JPEGs, the PNG
    named ``.JPEG``: the loader reads them as they are). ``'shorter'``
    resizes the shorter side to ``size`` keeping the aspect ratio (the size
    :class:`~chainer_resnet.data.transforms.ValTransform` resizes to, by the
    same rounding); ``'square'`` resizes to ``size`` x ``size`` (the
    ``pre_resized`` augmentation's input). Both use the transforms' bilinear
    filter, convert what is not RGB or grayscale to RGB as
    :func:`~chainer_resnet.data.layouts.read_image` would, and write a JPEG
    of ``quality``; a JPEG that already has the target size is kept as is.
    """

    def __init__(self, resize=None, size=256, quality=90):
        if resize not in (None, 'shorter', 'square'):
            raise ValueError('resize must be None, "shorter" or "square", got {!r}'
                             .format(resize))
        self.resize, self.size, self.quality = resize, int(size), int(quality)

    def target(self, width, height):
        """The (width, height) an image of this size is written at."""
        if self.resize == 'square':
            return self.size, self.size
        new_height, new_width = shorter_side_size(height, width, self.size)
        return new_width, new_height

    def __call__(self, data, where):
        """The bytes to write for the image file ``data``."""
        if self.resize is None:
            return data
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                size = self.target(*image.size)
                if (size == image.size and image.format == 'JPEG'
                        and image.mode in ('L', 'RGB')):
                    return data
                if image.mode not in ('L', 'RGB'):
                    image = image.convert('RGB')
                resized = image.resize(size, _BILINEAR)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DatasetError('{} cannot be decoded to be resized ({}: {}). Prepare without '
                               '--resize to copy the files as they are (the trainer\'s '
                               '--skip-bad-images handles unreadable images).'.format(
                                   where, type(exc).__name__, exc)) from None
        out = io.BytesIO()
        resized.save(out, format='JPEG', quality=self.quality)
        return out.getvalue()


def _read_exactly(f, size):
    """``size`` bytes from ``f`` (fewer only at its end): one unbuffered read
    may return fewer than asked."""
    chunks, left = [], size
    while left > 0:
        chunk = f.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b''.join(chunks)


def _images(task, f):
    """``(name, data, where)`` of each image of ``task``, read from ``f``."""
    if task.split == 'val':
        for member in task.members:
            f.seek(member.offset)
            data = _read_exactly(f, member.size)
            where = '{} in {}'.format(member.name, task.archive)
            if len(data) != member.size:
                raise DatasetError('{} is cut short: {} of {} bytes'.format(
                    where, len(data), member.size))
            yield os.path.basename(member.name), data, where
        return
    (inner,) = task.members
    where = 'class archive {} in {}'.format(inner.name, task.archive)
    for member, data in _scan(_Window(f, inner.offset, inner.size), inner.size, where,
                              read=True):
        yield os.path.basename(member.name), data, '{} of {}'.format(member.name, where)


def extract_class(task, converter, still_wanted=None):
    """Write the images of one class into ``task.folder``, which must not exist.

    ``still_wanted()`` is asked before each file; when it returns False the
    work stops (SystemExit): a worker whose parent died stops writing.

    Returns:
        Result: images written, bytes read from the archive (the class's
        inner tar, or its images), bytes written.

    Raises:
        DatasetError: a damaged or cut-short archive, a name that cannot be
            written, a name twice in one class, an image that cannot be
            resized.
    """
    os.makedirs(task.folder)
    images = written = read = 0
    seen = set()
    # An inner tar is read front to back (buffered); validation images lie
    # scattered over the archive, and a buffer would read a megabyte for each.
    with open(task.archive, 'rb', buffering=_BUFFER if task.split == 'train' else 0) as f:
        for name, data, where in _images(task, f):
            if still_wanted is not None and not still_wanted():
                raise SystemExit(1)
            check_image_name(name, where)
            if name in seen:
                raise DatasetError('{}: {} is in class {} twice'.format(where, name, task.name))
            seen.add(name)
            data_out = converter(data, where)
            with open(os.path.join(task.folder, name), 'wb') as out:
                out.write(data_out)
            images += 1
            read += len(data)
            written += len(data_out)
    if task.split == 'train':
        read = task.members[0].size
    return Result(task, images, read, written)
