"""Tests for chainer_resnet.data.layouts: list files, class folders, open_dataset.

Image trees are generated in tmp_path; ``list_tree`` (three images and a
list file) is in conftest.py because the sampling tests use it too.
"""

import os
import pickle

import numpy
import pytest
from PIL import Image

from chainer_resnet.data import layouts


def write_image(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def solid(colour, size=(6, 9)):
    return numpy.full(size + (3,), colour, dtype=numpy.uint8)


# ---------------------------------------------------------------------------
# ListDataset

def test_list_dataset_reads_images_and_labels_in_file_order(list_tree):
    list_path, root = list_tree
    ds = layouts.ListDataset(list_path, root)
    assert len(ds) == 3
    assert ds.paths == [os.path.join(root, 'b', 'gray.png'),
                        os.path.join(root, 'a', 'red.png'),
                        os.path.join(root, 'a', 'blue.JPEG')]
    assert all(os.path.isabs(p) for p in ds.paths)
    assert ds.labels.dtype == numpy.int32
    numpy.testing.assert_array_equal(ds.labels, [1, 2, 0])
    assert ds.num_classes == 3

    gray, label = ds[0]
    assert gray.shape == (5, 4, 3) and gray.dtype == numpy.uint8
    assert (gray == 77).all()  # grayscale replicated to RGB
    assert label == 1 and label.dtype == numpy.int32
    red, _ = ds.get_example(1)
    assert red.shape == (6, 9, 3)
    numpy.testing.assert_array_equal(red[0, 0], [255, 0, 0])
    blue, label = ds[2]
    assert blue.shape == (16, 16, 3) and label == 0
    assert abs(int(blue[8, 8, 2]) - 255) <= 3 and blue[8, 8, 0] <= 3


def test_list_dataset_relative_root_gives_absolute_paths(list_tree,
                                                         monkeypatch):
    list_path, root = list_tree
    monkeypatch.chdir(os.path.dirname(root))
    ds = layouts.ListDataset(list_path, 'images', num_classes=5)
    assert ds.paths[1] == os.path.join(root, 'a', 'red.png')
    assert ds.num_classes == 5


def test_list_dataset_rgba_is_converted_to_rgb(tmp_path):
    rgba = numpy.zeros((3, 3, 4), dtype=numpy.uint8)
    rgba[..., 1] = 200
    rgba[..., 3] = 10
    write_image(str(tmp_path / 'x.png'), rgba)
    (tmp_path / 'l.txt').write_text('x.png 0\n')
    image, _ = layouts.ListDataset(str(tmp_path / 'l.txt'), str(tmp_path))[0]
    assert image.shape == (3, 3, 3)
    assert (image[..., 1] == 200).all() and (image[..., 0] == 0).all()


def test_missing_list_file(tmp_path):
    missing = str(tmp_path / 'nope.txt')
    with pytest.raises(layouts.DatasetError, match='nope.txt does not exist'):
        layouts.ListDataset(missing, str(tmp_path))


def test_missing_list_root(list_tree, tmp_path):
    list_path, _ = list_tree
    with pytest.raises(layouts.DatasetError) as info:
        layouts.ListDataset(list_path, str(tmp_path / 'elsewhere'))
    assert 'elsewhere' in str(info.value) and 'not a folder' in str(info.value)
    assert list_path in str(info.value)


@pytest.mark.parametrize('bad_line, fields', [
    ('a/red.png', 1), ('a/red.png 1 2', 3), ('my photo.png 1', 3)])
def test_malformed_line_names_file_line_and_text(list_tree, bad_line, fields):
    list_path, root = list_tree
    with open(list_path, 'a') as f:
        f.write(bad_line + '\n')
    # fixture lines: 1 blank, 2, 3, 4 blank, 5, 6 blank, then ours is line 7
    with pytest.raises(layouts.DatasetError) as info:
        layouts.ListDataset(list_path, root)
    message = str(info.value)
    assert '{}, line 7'.format(list_path) in message
    assert 'got {}'.format(fields) in message
    assert repr(bad_line) in message


def test_non_integer_label(list_tree):
    list_path, root = list_tree
    with open(list_path, 'a') as f:
        f.write('a/red.png cat\n')
    with pytest.raises(layouts.DatasetError,
                       match=r'line 7: label .cat. is not an integer'):
        layouts.ListDataset(list_path, root)


def test_negative_label(list_tree):
    list_path, root = list_tree
    with open(list_path, 'a') as f:
        f.write('a/red.png -1\n')
    with pytest.raises(layouts.DatasetError, match=r'line 7: label -1 is negative'):
        layouts.ListDataset(list_path, root)


def test_label_at_num_classes_is_out_of_range(list_tree):
    list_path, root = list_tree
    layouts.ListDataset(list_path, root, num_classes=3)  # labels 0..2 fit
    with pytest.raises(layouts.DatasetError) as info:
        layouts.ListDataset(list_path, root, num_classes=2)
    message = str(info.value)
    assert '{}, line 3: label 2 is out of range [0, 2)'.format(
        list_path) in message
    assert 'num_classes=2' in message


def test_missing_images_reported_with_line_numbers(list_tree):
    list_path, root = list_tree
    with open(list_path, 'a') as f:
        f.write('a/gone1.png 0\n\nb/gone2.png 1\n')
    with pytest.raises(layouts.DatasetError) as info:
        layouts.ListDataset(list_path, root)
    message = str(info.value)
    assert message.startswith('2 of the 5 images listed in {}'.format(
        list_path))
    assert 'line 7: {}'.format(os.path.join(root, 'a', 'gone1.png')) in message
    assert 'line 9: {}'.format(os.path.join(root, 'b', 'gone2.png')) in message
    assert 'root' in message


def test_missing_images_report_is_capped(tmp_path):
    (tmp_path / 'l.txt').write_text(
        ''.join('x{}.png 0\n'.format(i) for i in range(20)))
    with pytest.raises(layouts.DatasetError) as info:
        layouts.ListDataset(str(tmp_path / 'l.txt'), str(tmp_path))
    message = str(info.value)
    assert message.startswith('20 of the 20 images')
    assert 'line 5:' in message and 'line 6:' not in message


def test_empty_list_file(tmp_path):
    (tmp_path / 'l.txt').write_text('\n\n')
    with pytest.raises(layouts.DatasetError, match='l.txt has no entries'):
        layouts.ListDataset(str(tmp_path / 'l.txt'), str(tmp_path))


@pytest.mark.parametrize('content', [b'not an image at all', 'truncated'])
def test_corrupt_image_named_when_loaded(tmp_path, content):
    path = tmp_path / 'bad.jpg'
    if content == 'truncated':
        write_image(str(tmp_path / 'good.jpg'),
                    numpy.random.default_rng(0).integers(
                        0, 256, (64, 64, 3), dtype=numpy.uint8))
        content = (tmp_path / 'good.jpg').read_bytes()
        content = content[:len(content) // 2]
    path.write_bytes(content)
    (tmp_path / 'l.txt').write_text('bad.jpg 0\n')
    ds = layouts.ListDataset(str(tmp_path / 'l.txt'), str(tmp_path))
    with pytest.raises(layouts.DatasetError) as info:
        ds[0]
    assert 'cannot read image {}'.format(path) in str(info.value)
    assert 'corrupt' in str(info.value)


def test_image_deleted_after_build_is_named(list_tree):
    list_path, root = list_tree
    ds = layouts.ListDataset(list_path, root)
    os.remove(ds.paths[0])
    with pytest.raises(layouts.DatasetError, match='gray.png does not exist'):
        ds[0]


def test_list_with_a_byte_order_mark_reads_the_first_path_plainly(list_tree):
    list_path, root = list_tree
    plain = layouts.ListDataset(list_path, root)
    with open(list_path, 'rb') as f:
        content = f.read()
    with open(list_path, 'wb') as f:
        f.write(b'\xef\xbb\xbf' + content.lstrip(b'\n'))  # BOM, then the first path
    ds = layouts.ListDataset(list_path, root)
    assert ds.paths == plain.paths
    assert '\ufeff' not in ds.paths[0]
    numpy.testing.assert_array_equal(ds.labels, plain.labels)


@pytest.mark.parametrize('newline', [b'\n', b'\r\n', b'\r'])
@pytest.mark.parametrize('bom', [b'', b'\xef\xbb\xbf'])
def test_list_that_is_not_utf8_names_file_and_line(list_tree, newline, bom):
    list_path, root = list_tree
    lines = [b'b/gray.png 1', b'', b'caf\xe9/x.png 2', b'a/red.png 2']   # Latin-1 e-acute
    with open(list_path, 'wb') as f:
        f.write(bom + newline.join(lines) + newline)
    with pytest.raises(layouts.DatasetError) as info:
        layouts.ListDataset(list_path, root)
    message = str(info.value)
    assert message.startswith('{}, line 3: '.format(list_path))
    assert "b'\\xe9' is not UTF-8" in message
    assert '(line "caf\\xe9/x.png 2")' in message      # the line, the byte visible
    assert 'Re-encode the list as UTF-8' in message
    assert '\n' not in message


def test_list_that_is_not_utf8_on_its_first_line(tmp_path):
    (tmp_path / 'l.txt').write_bytes(b'\xff\xfeb\x00')    # UTF-16, as Windows may save it
    with pytest.raises(layouts.DatasetError, match=r'l.txt, line 1: byte'):
        layouts.ListDataset(str(tmp_path / 'l.txt'), str(tmp_path))


# ---------------------------------------------------------------------------
# FolderDataset

def test_folder_dataset_sorted_classes_and_files(tmp_path):
    root = tmp_path / 'root'
    # created out of order; labels must follow sorted names
    write_image(str(root / 'zebra' / 'b.PNG'), solid((1, 1, 1)))
    write_image(str(root / 'zebra' / 'a.jpg'), solid((2, 2, 2)))
    write_image(str(root / 'apple' / 'x.JpEg'), solid((3, 3, 3)))
    write_image(str(root / 'apple' / 'sub' / 'y.bmp'), solid((4, 4, 4)))
    write_image(str(root / 'mango' / 'm.ppm'), solid((5, 5, 5)))
    (root / 'mango' / 'notes.txt').write_text('not an image')
    write_image(str(root / 'mango' / '.hidden.png'), solid((6, 6, 6)))
    write_image(str(root / '.cache' / 'c.png'), solid((7, 7, 7)))
    write_image(str(root / 'loose.png'), solid((8, 8, 8)))

    ds = layouts.FolderDataset(str(root))
    assert ds.classes == ['apple', 'mango', 'zebra']
    assert ds.num_classes == 3
    relative = [os.path.relpath(p, str(root)) for p in ds.paths]
    assert relative == [os.path.join('apple', 'sub', 'y.bmp'),
                        os.path.join('apple', 'x.JpEg'),
                        os.path.join('mango', 'm.ppm'),
                        os.path.join('zebra', 'a.jpg'),
                        os.path.join('zebra', 'b.PNG')]
    assert ds.labels.dtype == numpy.int32
    numpy.testing.assert_array_equal(ds.labels, [0, 0, 1, 2, 2])
    image, label = ds[3]
    assert image.shape == (6, 9, 3) and image.dtype == numpy.uint8
    assert label == 2 and label.dtype == numpy.int32
    assert abs(int(image.mean()) - 2) <= 2


def test_folder_missing_root(tmp_path):
    with pytest.raises(layouts.DatasetError, match='nowhere is not a folder'):
        layouts.FolderDataset(str(tmp_path / 'nowhere'))


def test_folder_without_class_folders(tmp_path):
    write_image(str(tmp_path / 'loose.png'), solid((1, 2, 3)))
    with pytest.raises(layouts.DatasetError) as info:
        layouts.FolderDataset(str(tmp_path))
    assert '{} has no class folders'.format(tmp_path) in str(info.value)


def test_folder_empty_class_named(tmp_path):
    write_image(str(tmp_path / 'cat' / 'a.png'), solid((1, 2, 3)))
    os.makedirs(str(tmp_path / 'dog'))
    (tmp_path / 'dog' / 'readme.txt').write_text('no images here')
    with pytest.raises(layouts.DatasetError) as info:
        layouts.FolderDataset(str(tmp_path))
    message = str(info.value)
    assert 'class folder {}'.format(tmp_path / 'dog') in message
    assert "'dog'" in message and 'holds no images' in message


def test_folder_corrupt_image_named(tmp_path):
    (tmp_path / 'cat').mkdir()
    (tmp_path / 'cat' / 'x.png').write_bytes(b'\x89PNG garbage')
    ds = layouts.FolderDataset(str(tmp_path))
    with pytest.raises(layouts.DatasetError, match='cannot read image .*x.png'):
        ds[0]




def class_tree(root, names):
    for name in names:
        write_image(os.path.join(str(root), name, 'x.png'), solid((1, 2, 3)))
    return str(root)


def test_folder_count_must_match_num_classes(tmp_path):
    root = class_tree(tmp_path / 'val', ['cat', 'dog', 'eel'])
    assert layouts.FolderDataset(root, num_classes=3).num_classes == 3   # negative control
    for num_classes in (2, 4):
        with pytest.raises(layouts.DatasetError) as info:
            layouts.FolderDataset(root, num_classes=num_classes)
        message = str(info.value)
        assert message.startswith('image root {} has 3 class folders but the recipe has '
                                  'num_classes={}'.format(root, num_classes))
        assert 'Fix the tree' in message and '--set num_classes=3' in message


def test_folder_classes_must_match_the_training_trees(tmp_path):
    train = layouts.FolderDataset(class_tree(tmp_path / 'train', ['cat', 'dog', 'eel', 'fox']))
    assert train.classes.root == train.root == str(tmp_path / 'train')
    same = layouts.FolderDataset(class_tree(tmp_path / 'same', ['cat', 'dog', 'eel', 'fox']),
                                 num_classes=4, classes=train.classes)   # negative control
    assert same.classes == train.classes
    numpy.testing.assert_array_equal(same.labels, train.labels)

    missing = class_tree(tmp_path / 'missing', ['cat', 'eel', 'fox'])
    with pytest.raises(layouts.DatasetError) as info:
        layouts.FolderDataset(missing, classes=train.classes)
    message = str(info.value)
    assert message.startswith('class folders of {} differ from the training tree {}: '
                              '1 missing (dog), 0 extra (none)'.format(missing, train.root))
    assert 'shifts every later label' in message

    extra = class_tree(tmp_path / 'extra', ['ant', 'cat', 'dog', 'eel', 'fox', 'gnu'])
    # the names are compared first, as they say more than the count
    with pytest.raises(layouts.DatasetError, match=r'0 missing \(none\), 2 extra \(ant, gnu\)'):
        layouts.FolderDataset(extra, num_classes=4, classes=train.classes)


def test_folder_class_mismatch_lists_only_the_first_names(tmp_path):
    names = ['c{:02d}'.format(i) for i in range(12)]
    root = class_tree(tmp_path / 'val', names[:1])
    with pytest.raises(layouts.DatasetError) as info:
        layouts.FolderDataset(root, classes=names[1:] + ['zz'])
    message = str(info.value)
    assert 'differ from the classes given: 12 missing (c01, c02, c03, c04, c05, ... 7 more), ' \
        '1 extra (c00)' in message


def test_folder_classes_in_another_order(tmp_path):
    root = class_tree(tmp_path / 'val', ['cat', 'dog'])
    with pytest.raises(layouts.DatasetError, match='in another order'):
        layouts.FolderDataset(root, classes=['dog', 'cat'])


def test_class_names_pickle_with_their_root(tmp_path):
    ds = layouts.FolderDataset(class_tree(tmp_path / 'train', ['cat', 'dog']))
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.classes == ['cat', 'dog'] and clone.classes.root == ds.root


# ---------------------------------------------------------------------------
# open_dataset

def test_open_dataset_reads_a_folder_as_class_folders(list_tree):
    _, root = list_tree
    ds = layouts.open_dataset(root, '/ignored/for/folders', num_classes=2)
    assert isinstance(ds, layouts.FolderDataset)
    assert ds.classes == ['a', 'b'] and ds.num_classes == 2
    expected = layouts.FolderDataset(root)
    assert ds.paths == expected.paths
    numpy.testing.assert_array_equal(ds.labels, expected.labels)
    # num_classes is no longer ignored for folders (issue 9): 2 folders, 1 output
    with pytest.raises(layouts.DatasetError, match='has 2 class folders'):
        layouts.open_dataset(root, None, num_classes=1)


def test_open_dataset_reads_a_file_as_a_list_under_root(list_tree):
    list_path, root = list_tree
    ds = layouts.open_dataset(list_path, root, num_classes=5)
    assert isinstance(ds, layouts.ListDataset)
    assert ds.num_classes == 5
    expected = layouts.ListDataset(list_path, root, num_classes=5)
    assert ds.paths == expected.paths
    numpy.testing.assert_array_equal(ds.labels, expected.labels)
    with pytest.raises(layouts.DatasetError, match='out of range'):
        layouts.open_dataset(list_path, root, num_classes=2)


def test_open_dataset_list_root_defaults_to_the_list_files_folder(list_tree,
                                                                 monkeypatch):
    _, root = list_tree
    with open(os.path.join(root, 'inside.txt'), 'w') as f:
        f.write('a/red.png 2\nb/gray.png 1\n')
    monkeypatch.chdir(root)
    # a bare file name: its folder is the working directory
    ds = layouts.open_dataset('inside.txt', None, None)
    assert ds.paths == [os.path.join(root, 'a', 'red.png'),
                        os.path.join(root, 'b', 'gray.png')]
    assert ds.num_classes == 3
    # negative control: the fixture's list sits above the images
    list_path, _ = list_tree
    with pytest.raises(layouts.DatasetError, match='3 of the 3 images'):
        layouts.open_dataset(list_path, None, None)


def test_open_dataset_missing_path_is_a_missing_list_file(tmp_path):
    with pytest.raises(layouts.DatasetError, match='nope.txt does not exist'):
        layouts.open_dataset(str(tmp_path / 'nope.txt'), None, None)


def test_open_dataset_checks_a_validation_tree_against_the_training_classes(tmp_path, list_tree):
    train = layouts.open_dataset(class_tree(tmp_path / 'train', ['cat', 'dog']), None, 2)
    val_root = class_tree(tmp_path / 'val', ['cat', 'dog'])
    val = layouts.open_dataset(val_root, None, 2, classes=getattr(train, 'classes', None))
    assert val.classes == train.classes
    class_tree(tmp_path / 'val', ['eel'])
    with pytest.raises(layouts.DatasetError, match=r'1 extra \(eel\)'):
        layouts.open_dataset(val_root, None, 3, classes=train.classes)
    # a list file has no class names: classes is ignored, labels are checked
    list_path, root = list_tree
    listed = layouts.open_dataset(list_path, root, 3, classes=train.classes)
    assert isinstance(listed, layouts.ListDataset)
    # a list-file training set has no classes: the trainer passes None
    assert getattr(listed, 'classes', None) is None
    assert layouts.open_dataset(val_root, None, 3, classes=None).num_classes == 3


# ---------------------------------------------------------------------------
# Start-up cost: an index without stat-ing every image, and a per-shard check (issue 10)

def _count_stats(monkeypatch):
    """Count os.stat and os.lstat calls (os.path.exists, isfile and isdir use os.stat)."""
    counts = {'stat': 0}
    real_stat, real_lstat = os.stat, os.lstat

    def stat(*args, **kwargs):
        counts['stat'] += 1
        return real_stat(*args, **kwargs)

    def lstat(*args, **kwargs):
        counts['stat'] += 1
        return real_lstat(*args, **kwargs)
    monkeypatch.setattr(os, 'stat', stat)
    monkeypatch.setattr(os, 'lstat', lstat)
    return counts


def _long_list(tmp_path, n, present=()):
    """A list file of `n` images x<i>.png; only those in `present` exist."""
    for i in present:
        write_image(str(tmp_path / 'x{}.png'.format(i)), solid((i, i, i)))
    (tmp_path / 'l.txt').write_text(''.join('x{}.png {}\n'.format(i, i % 3) for i in range(n)))
    return str(tmp_path / 'l.txt'), str(tmp_path)


def test_without_check_files_building_the_index_stats_no_image(tmp_path, monkeypatch):
    list_path, root = _long_list(tmp_path, 2000, present=[5, 17])
    counts = _count_stats(monkeypatch)
    ds = layouts.ListDataset(list_path, root, check_files=False)
    assert counts['stat'] <= 3                     # the list file and root, not 2,000 images
    assert len(ds) == 2000 and ds.paths[17] == os.path.join(root, 'x17.png')
    numpy.testing.assert_array_equal(ds.line_numbers[:3], [1, 2, 3])
    counts['stat'] = 0
    ds.check_files([17, 5, 17, 5])                 # repeats are checked once
    assert counts['stat'] == 2
    image, label = ds[17]
    assert image.shape == (6, 9, 3) and label == 17 % 3
    # Negative control: today's default stats every listed image (and fails here).
    counts['stat'] = 0
    with pytest.raises(layouts.DatasetError, match='1998 of the 2000 images listed'):
        layouts.ListDataset(list_path, root)
    assert counts['stat'] >= 2000


def test_check_files_on_a_shard_names_count_lines_root_and_what_to_do(tmp_path):
    (tmp_path / 'l.txt').write_text('\n'.join(
        ['x0.png 0', '', 'gone1.png 1', 'x0.png 0', 'gone2.png 2'] +
        ['gone{}.png 0'.format(i) for i in range(3, 12)]) + '\n')
    write_image(str(tmp_path / 'x0.png'), solid((1, 1, 1)))
    ds = layouts.ListDataset(str(tmp_path / 'l.txt'), str(tmp_path), check_files=False)
    assert len(ds) == 13
    ds.check_files([0, 2])                         # both x0.png: passes
    with pytest.raises(layouts.DatasetError) as info:
        ds.check_files(numpy.array([4, 1, 0, 3] + list(range(5, 12))))
    message = str(info.value)
    assert message.startswith("10 of the 11 images of this rank's shard (of the 13 listed in "
                              "{})".format(tmp_path / 'l.txt'))
    assert 'under root {} on host '.format(tmp_path) in message
    assert 'first: line 3: {}; line 5: {};'.format(tmp_path / 'gone1.png',
                                                  tmp_path / 'gone2.png') in message
    assert message.count('line ') == 5            # capped, as the full check is
    assert 'Check that root is the folder' in message and 'every node' in message
    with pytest.raises(IndexError):
        ds.check_files([13])
    ds.check_files([])                             # an empty shard checks nothing


def test_check_files_over_every_index_reads_like_the_build_time_check(list_tree):
    list_path, root = list_tree
    with open(list_path, 'a') as f:
        f.write('a/gone1.png 0\n')
    ds = layouts.ListDataset(list_path, root, check_files=False)
    messages = []
    for check in (lambda: layouts.ListDataset(list_path, root),      # at build time
                  lambda: ds.check_files(range(len(ds)))):            # later, every index
        with pytest.raises(layouts.DatasetError) as info:
            check()
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith('1 of the 4 images listed in {}'.format(list_path))


def test_an_unchecked_index_pickles_to_the_same_dataset(list_tree):
    list_path, root = list_tree
    ds = layouts.ListDataset(list_path, root, check_files=False)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.paths == ds.paths and clone.root == ds.root
    numpy.testing.assert_array_equal(clone.labels, ds.labels)
    numpy.testing.assert_array_equal(clone.line_numbers, [2, 3, 5])
    clone.check_files([0, 1, 2])


def test_folder_check_files_finds_files_removed_after_the_walk(tmp_path):
    root = class_tree(tmp_path / 'train', ['cat', 'dog'])
    ds = layouts.FolderDataset(root)
    ds.check_files([0, 1])                         # negative control: all there
    os.remove(ds.paths[1])
    with pytest.raises(layouts.DatasetError) as info:
        ds.check_files([0, 1])
    message = str(info.value)
    assert message.startswith('1 of the 2 images checked on host ')
    assert 'missing from image root {} (first: {})'.format(root, ds.paths[1]) in message
    assert 'same path on every node' in message


def test_open_dataset_passes_check_files_on(tmp_path):
    list_path, root = _long_list(tmp_path, 4)
    with pytest.raises(layouts.DatasetError, match='4 of the 4 images'):
        layouts.open_dataset(list_path, root, 3)
    ds = layouts.open_dataset(list_path, root, 3, check_files=False)
    assert isinstance(ds, layouts.ListDataset) and len(ds) == 4
    folders = layouts.open_dataset(class_tree(tmp_path / 't', ['a']), None, 1,
                                   check_files=False)
    assert isinstance(folders, layouts.FolderDataset) and len(folders) == 1


def test_listed_paths_are_normalised_as_abspath_would(tmp_path):
    listed = ['x.png', './x.png', 'a/../x.png', 'a//b.png', 'a/./b.png', '.hidden.png',
              '../up.png', str(tmp_path / 'abs' / 'y.png')]
    (tmp_path / 'l.txt').write_text(''.join('{} 0\n'.format(p) for p in listed))
    for root in (str(tmp_path / 'images'), str(tmp_path / 'images') + '/', '/'):
        if root != '/':
            os.makedirs(root, exist_ok=True)
        ds = layouts.ListDataset(str(tmp_path / 'l.txt'), root, check_files=False)
        assert ds.paths == [os.path.abspath(os.path.join(root, p)) for p in listed], root


# ---------------------------------------------------------------------------
# Images listed more than once

def _repeat_lines(list_path, count):
    with open(list_path) as f:
        lines = [line for line in f if line.strip()]
    with open(list_path, 'a') as f:
        f.writelines(lines[:1] * count)
    return lines[0].split()[0]


def test_a_list_may_repeat_an_image_and_says_how_often(list_tree):
    list_path, root = list_tree
    repeated = _repeat_lines(list_path, 2)
    ds = layouts.open_dataset(list_path, root, 3)
    assert len(ds) == 5
    assert ds.duplicates.images == 1 and ds.duplicates.extra_lines == 2
    assert ds.duplicates.first == [(os.path.join(root, repeated), [2, 7, 8])]


def test_a_validation_list_that_repeats_an_image_is_refused(list_tree):
    list_path, root = list_tree
    assert layouts.open_dataset(list_path, root, 3, allow_duplicates=False).duplicates is None
    repeated = _repeat_lines(list_path, 1)
    with pytest.raises(layouts.DatasetError) as info:
        layouts.open_dataset(list_path, root, 3, allow_duplicates=False)
    message = str(info.value)
    assert message.startswith('{} lists 1 image(s) more than once'.format(list_path))
    assert '{} on lines 2 and 7'.format(os.path.join(root, repeated)) in message
    assert 'Keep one line per image' in message


def test_exif_orientation_is_not_applied(tmp_path):
    """Documented behaviour (as torchvision's loader): the pixels as stored."""
    from PIL import ImageOps
    stored = numpy.zeros((2, 4, 3), dtype=numpy.uint8)
    stored[0, 0] = 255                                  # a white corner, top left
    exif = Image.Exif()
    exif[0x0112] = 6                                    # Orientation: rotate 90 CW to view
    path = str(tmp_path / 'phone.png')
    Image.fromarray(stored).save(path, exif=exif)
    image = layouts.read_image(path)
    numpy.testing.assert_array_equal(image, stored)     # 2 x 4, corner where it was stored
    # Negative control: applying the tag would have turned it to 4 x 2.
    with Image.open(path) as img:
        assert numpy.asarray(ImageOps.exif_transpose(img)).shape == (4, 2, 3)


def test_a_decompression_bomb_is_a_clear_error_before_any_pixel_is_decoded(tmp_path):
    """A PNG whose header claims 40,000 x 40,000 pixels (1.6 billion; PIL refuses
    above twice its MAX_IMAGE_PIXELS): refused at once, naming the file."""
    import struct
    import time
    import zlib

    def chunk(kind, data):
        return (struct.pack('>I', len(data)) + kind + data
                + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))
    path = tmp_path / 'bomb.png'
    path.write_bytes(b'\x89PNG\r\n\x1a\n'
                     + chunk(b'IHDR', struct.pack('>IIBBBBB', 40000, 40000, 8, 0, 0, 0, 0))
                     + chunk(b'IDAT', zlib.compress(b'\0' * 1024)) + chunk(b'IEND', b''))
    start = time.monotonic()
    with pytest.raises(layouts.DatasetError) as info:
        layouts.read_image(str(path))
    assert time.monotonic() - start < 10
    assert str(path) in str(info.value) and 'DecompressionBombError' in str(info.value)
