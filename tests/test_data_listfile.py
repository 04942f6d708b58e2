"""chainer_resnet.data.listfile: a list file's lines, and the images it names twice.

The dataset built on it (ListDataset, validation lists refused when they
repeat an image) is tested in tests/test_data_layouts.py; the warnings a
run prints in tests/test_data_shards.py; whole launches in tests/test_faults.py.
"""

import pytest

from chainer_resnet.data import layouts, listfile


def write(tmp_path, text, name='list.txt'):
    path = tmp_path / name
    path.write_bytes(text.encode('utf-8'))
    return str(path)


def test_parse_keeps_paths_labels_and_line_numbers(tmp_path):
    path = write(tmp_path, 'a/x.jpg 2\r\n\r\n  b/y.png\t0 \r\nc/z.JPEG 1')
    assert listfile.parse(path, 3) == (['a/x.jpg', 'b/y.png', 'c/z.JPEG'], [2, 0, 1],
                                       [1, 3, 4])


@pytest.mark.parametrize('label, hinted', [(1000, True), (1001, False)])
def test_a_label_of_num_classes_suggests_labels_counted_from_one(tmp_path, label, hinted):
    path = write(tmp_path, 'a/x.jpg 1\nb/y.jpg {}\n'.format(label))
    with pytest.raises(layouts.DatasetError) as info:
        listfile.parse(path, 1000)
    message = str(info.value)
    assert '{}, line 2: label {} is out of range [0, 1000)'.format(path, label) in message
    assert ('counts classes from 1: subtract 1' in message) is hinted


def test_duplicates_are_counted_and_the_first_named_with_their_lines():
    paths = ['/r/a', '/r/b', '/r/a', '/r/c', '/r/a', '/r/b'] + ['/r/d{}'.format(k) for k in
                                                                 range(8) for _ in (0, 1)]
    labels = [0, 1, 0, 2, 0, 1] + [3] * 16
    lines = list(range(1, len(paths) + 1))
    found = listfile.duplicates(paths, labels, lines, shown=3)
    assert found.images == 10 and found.extra_lines == 11
    assert found.first == [('/r/a', [1, 3, 5]), ('/r/b', [2, 6]), ('/r/d0', [7, 8])]
    text = listfile.describe_duplicates(found)
    assert text.startswith('10 image(s) more than once (11 extra line(s); first: '
                           '/r/a on lines 1 and 3 and 5; /r/b on lines 2 and 6; ')
    assert text.endswith('; ...)')
    # Negative control: a list without repeats has none.
    assert listfile.duplicates(['/r/a', '/r/b'], [0, 0], [1, 2]) is None


def test_one_image_with_two_labels_is_an_error_in_any_list():
    with pytest.raises(layouts.DatasetError) as info:
        listfile.duplicates(['/r/a', '/r/b', '/r/a'], [4, 1, 7], [1, 2, 9], 'train.txt')
    assert str(info.value).startswith(
        'train.txt, lines 1 and 9: /r/a is listed with the labels 4 and 7')
