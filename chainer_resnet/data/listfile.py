"""A list file of ``relative/path label`` lines: reading and parsing it.

The layout of Chainer's ImageNet example, read by
:class:`~chainer_resnet.data.layouts.ListDataset`: one image per line, a
path relative to an image root (no whitespace in it) and an integer label
from 0. The file is UTF-8 (a leading byte-order mark is dropped); blank
lines are ignored; ``\\n``, ``\\r\\n`` and ``\\r`` all end a line. Every problem
is a :class:`~chainer_resnet.data.layouts.DatasetError` naming the file and
the line, and saying what to do.
"""

import collections
import io
import os


def _error(message):
    # layouts imports this module: its DatasetError is looked up when raised.
    from chainer_resnet.data.layouts import DatasetError
    return DatasetError(message)


def read_text(list_path):
    """The text of a UTF-8 list file, as a file object of lines.

    Decoded in one piece, not line by line, so that a byte that is not
    UTF-8 can be reported with its line: a text-mode file decodes in
    blocks and fails at the block, not the line. Newlines are read as
    ``open`` reads them (``\\n``, ``\\r\\n`` or ``\\r``).
    """
    with open(list_path, 'rb') as f:
        data = f.read()
    try:
        text = data.decode('utf-8-sig')
    except UnicodeDecodeError as exc:
        # exc.object is the data after any byte-order mark, and what
        # precedes exc.start decodes.
        before = exc.object[:exc.start].decode('utf-8')
        line_number = _lines(before).count('\n') + 1
        shown = _lines(exc.object.decode('utf-8', 'backslashreplace')).split('\n')
        raise _error(
            '{}, line {}: byte {!r} is not UTF-8 (line "{}"). Re-encode the list as '
            'UTF-8, e.g. with iconv -f LATIN1 -t UTF-8 (naming its real encoding).'.format(
                list_path, line_number, exc.object[exc.start:exc.end],
                shown[line_number - 1])) from None
    return io.StringIO(text, newline=None)


def _lines(text):
    """`text` with its newlines read as ``open`` reads them."""
    return io.StringIO(text, newline=None).read()


def parse(list_path, num_classes=None):
    """``(paths, labels, line_numbers)`` of the list file `list_path`, as lists.

    Paths as written (relative to the image root); labels checked to be
    integers in ``[0, num_classes)`` (only ``>= 0`` when `num_classes` is
    None); the 1-based line of each entry.

    Raises:
        DatasetError: the file is not UTF-8, a line does not have two fields,
            a label is not an integer or out of range, or there is no entry.
    """
    paths, labels, line_numbers = [], [], []
    with read_text(list_path) as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise _error(
                    '{}, line {}: expected 2 fields "relative/path label", got {} '
                    'in {!r}. Paths may not contain spaces.'
                    .format(list_path, line_number, len(fields), line.rstrip('\n')))
            path, label_text = fields
            try:
                label = int(label_text)
            except ValueError:
                raise _error(
                    '{}, line {}: label {!r} is not an integer (line {!r}). The '
                    'label is the last field, a class number from 0.'
                    .format(list_path, line_number, label_text, line.rstrip('\n'))
                ) from None
            if label < 0:
                raise _error(
                    '{}, line {}: label {} is negative; labels are class numbers '
                    'from 0. Fix the list file.'.format(list_path, line_number, label))
            if num_classes is not None and label >= num_classes:
                # The ImageNet devkit's ground truth counts classes from 1.
                hint = (' A label of exactly num_classes usually means the list counts '
                        'classes from 1: subtract 1 from every label.'
                        if label == num_classes else '')
                raise _error(
                    '{}, line {}: label {} is out of range [0, {}) for '
                    'num_classes={}. Fix the list file or pass the right '
                    'num_classes.{}'.format(
                        list_path, line_number, label, num_classes, num_classes, hint))
            paths.append(path)
            labels.append(label)
            line_numbers.append(line_number)
    if not paths:
        raise _error(
            'list file {} has no entries. Each line should be '
            '"relative/path label".'.format(list_path))
    return paths, labels, line_numbers


def absolute_paths(root, paths):
    """``os.path.abspath(os.path.join(root, p))`` for each of `paths`, `root` absolute.

    The same strings, 3-4x faster on ImageNet's 1.28 M paths (about 1 s
    instead of 3.5-5 s on one core, rank 0's share of every launch): a
    concatenation, and ``normpath`` only where a ``.`` or ``..`` segment, a
    doubled or a trailing separator may need it.
    """
    sep, normpath = os.sep, os.path.normpath
    prefix, dot, double = root.rstrip(sep) + sep, sep + '.', sep + sep
    full = [p if p.startswith(sep) else prefix + p for p in paths]
    return [normpath(f) if dot in f or double in f or f.endswith(sep) else f for f in full]


Duplicates = collections.namedtuple('Duplicates', 'images extra_lines first')
Duplicates.__doc__ = """The images a list file names more than once: how many (``images``), the
lines beyond one per image (``extra_lines``), and the first few as
``(path, [line, ...])`` (``first``)."""


def duplicates(paths, labels, line_numbers, list_path='the list file', shown=5):
    """:class:`Duplicates` of a parsed list (absolute `paths`), or None when every path is once.

    A set of the paths decides (about 0.1 s for ImageNet's 1.28 M); only a
    list with repeats is walked again to name them.

    Raises:
        DatasetError: one image is given two different labels (an image has
            one class: the list is wrong whatever the split).
    """
    if len(set(paths)) == len(paths):
        return None
    first_seen, repeated = {}, {}
    for k, path in enumerate(paths):
        j = first_seen.setdefault(path, k)
        if j == k:
            continue
        if labels[j] != labels[k]:
            raise _error(
                '{}, lines {} and {}: {} is listed with the labels {} and {}; an image has '
                'one class. Fix the list file.'.format(
                    list_path, line_numbers[j], line_numbers[k], path, labels[j], labels[k]))
        repeated.setdefault(path, [line_numbers[j]]).append(line_numbers[k])
    first = sorted(repeated.items(), key=lambda item: item[1][0])[:shown]
    return Duplicates(images=len(repeated),
                      extra_lines=sum(len(lines) - 1 for lines in repeated.values()),
                      first=first)


def describe_duplicates(found):
    """``'3 image(s) more than once (4 extra lines; first: PATH on lines 2 and 9; ...)'``."""
    shown = '; '.join('{} on lines {}'.format(path, ' and '.join(map(str, lines)))
                      for path, lines in found.first)
    more = '; ...' if found.images > len(found.first) else ''
    return '{} image(s) more than once ({} extra line(s); first: {}{})'.format(
        found.images, found.extra_lines, shown, more)
