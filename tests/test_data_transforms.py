"""Tests for chainer_resnet.data.transforms: crops, flips, normalisation, from_recipe."""

import dataclasses

import numpy
import pytest
from PIL import Image

from chainer_resnet import recipes
from chainer_resnet.data import transforms

MEAN = transforms.IMAGENET_MEAN
STD = transforms.IMAGENET_STD


def normalized(image_hwc):
    """The normalisation written out: float32 CHW, ((x / 255) - mean) / std."""
    x = image_hwc.astype(numpy.float32) / numpy.float32(255)
    x = (x - numpy.float32(MEAN)) / numpy.float32(STD)
    return x.transpose(2, 0, 1)


def denormalized(chw):
    """Inverse of :func:`normalized`, back to 0-255 (float) HWC."""
    x = chw.transpose(1, 2, 0) * numpy.float32(STD) + numpy.float32(MEAN)
    return x * 255


def random_image(h, w, seed=0):
    return numpy.random.default_rng(seed).integers(
        0, 256, (h, w, 3), dtype=numpy.uint8)


ALL_TRANSFORMS = [
    lambda: transforms.TrainTransform(16, MEAN, STD),
    lambda: transforms.ValTransform(16, MEAN, STD),
    lambda: transforms.PreResizedRandomCropTransform(16, MEAN, STD, pre_size=20),
    lambda: transforms.PreResizedCenterCropTransform(16, MEAN, STD, pre_size=20),
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
    out = transforms.ValTransform(16, MEAN, STD, resize_ratio=2)(image)
    numpy.testing.assert_array_equal(
        out, normalized(image[8:24, 16:32]))


@pytest.mark.parametrize('h, w', [(64, 96), (96, 64)])
def test_val_transform_centre_crop_after_resize(h, w):
    # linear ramps (R = 2x, G = 2y) survive a bilinear downscale away from
    # the borders; a centred crop has the image centre as its mean value.
    image = numpy.zeros((h, w, 3), dtype=numpy.uint8)
    image[..., 0] = 2 * numpy.arange(w)[None, :]
    image[..., 1] = 2 * numpy.arange(h)[:, None]
    out = denormalized(transforms.ValTransform(16, MEAN, STD, resize_ratio=2)(image))
    assert abs(out[..., 0].mean() - (w - 1)) < 1.0
    assert abs(out[..., 1].mean() - (h - 1)) < 1.0
    # downscaled by 2: neighbouring output pixels differ by about 4
    assert abs(numpy.diff(out[..., 0], axis=1).mean() - 4) < 0.2
    assert abs(numpy.diff(out[..., 1], axis=0).mean() - 4) < 0.2


def test_val_transforms_ignore_rng():
    image = random_image(40, 50)
    for t in (transforms.ValTransform(16, MEAN, STD),
              transforms.PreResizedCenterCropTransform(16, MEAN, STD, pre_size=20)):
        a = t(image)
        b = t(image, numpy.random.default_rng(5))
        numpy.testing.assert_array_equal(a, b)


def test_pre_resized_center_crop_is_centre_of_resized_square():
    image = random_image(30, 45)
    square = numpy.asarray(Image.fromarray(image).resize((20, 20),
                                                         Image.BILINEAR))
    out = transforms.PreResizedCenterCropTransform(16, MEAN, STD, pre_size=20)(image)
    numpy.testing.assert_array_equal(out, normalized(square[2:18, 2:18]))


def test_pre_resized_random_crop_is_a_window_of_the_resized_square():
    image = random_image(30, 45)
    square = numpy.asarray(Image.fromarray(image).resize((20, 20),
                                                         Image.BILINEAR))
    t = transforms.PreResizedRandomCropTransform(16, MEAN, STD, pre_size=20, flip=False)
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
    lambda flip: transforms.TrainTransform(8, MEAN, STD, scale=(1, 1), ratio=(1, 1),
                                  flip=flip),
    lambda flip: transforms.PreResizedRandomCropTransform(8, MEAN, STD, pre_size=8,
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
    t = transforms.TrainTransform(24, MEAN, STD, flip=False)
    for seed in range(10):
        top, left, h, w = transforms.sample_crop_box(
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
        top, left, bh, bw = transforms.sample_crop_box(h, w, scale, ratio, rng)
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
        box = transforms.sample_crop_box(h, w, (0.08, 1.0), (3 / 4, 4 / 3),
                                numpy.random.default_rng(seed))
        assert box == expected


def test_sample_crop_box_fallback_keeps_whole_image_inside_ratio():
    # scale above 1 can never fit: the fallback is the whole image
    box = transforms.sample_crop_box(30, 36, (2.0, 3.0), (3 / 4, 4 / 3),
                            numpy.random.default_rng(0))
    assert box == (0, 0, 30, 36)


@pytest.mark.parametrize('make, message', [
    (lambda: transforms.TrainTransform(16, (124, 117, 104), STD), 'Divide 0-255'),
    (lambda: transforms.TrainTransform(16, MEAN[:2], STD), 'one value per RGB'),
    (lambda: transforms.TrainTransform(16, MEAN, (0.2, 0, 0.2)), 'std be positive'),
    (lambda: transforms.TrainTransform(16, MEAN, STD, scale=(0.5, 0.1)), 'scale'),
    (lambda: transforms.TrainTransform(16, MEAN, STD, ratio=(0, 1)), 'ratio'),
    (lambda: transforms.TrainTransform(0, MEAN, STD), 'crop_size'),
    (lambda: transforms.ValTransform(16, MEAN, STD, resize_ratio=0.9), 'resize_ratio'),
    (lambda: transforms.PreResizedRandomCropTransform(32, MEAN, STD, pre_size=16),
     'pre_size'),
    (lambda: transforms.PreResizedCenterCropTransform(32, MEAN, STD, pre_size=16),
     'pre_size'),
])
def test_transform_arguments_are_checked(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_transforms_reject_wrong_image_and_rng():
    t = transforms.TrainTransform(8, MEAN, STD)
    with pytest.raises(ValueError, match=r'shape \(H, W, 3\)'):
        t(numpy.zeros((10, 10), dtype=numpy.uint8), numpy.random.default_rng())
    with pytest.raises(ValueError, match='float32'):
        t(numpy.zeros((10, 10, 3), dtype=numpy.float32),
          numpy.random.default_rng())
    with pytest.raises(TypeError, match='numpy.random.Generator'):
        t(random_image(10, 10), numpy.random.RandomState(0))


# ---------------------------------------------------------------------------
# from_recipe

OTHER_MEAN, OTHER_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.mark.parametrize('augmentation, by_hand', [
    ('random_resized', lambda flip: (
        transforms.TrainTransform(32, OTHER_MEAN, OTHER_STD, scale=(0.35, 1.0), flip=flip),
        transforms.ValTransform(32, OTHER_MEAN, OTHER_STD))),
    ('pre_resized', lambda flip: (
        transforms.PreResizedRandomCropTransform(32, OTHER_MEAN, OTHER_STD, pre_size=40,
                                                 flip=flip),
        transforms.PreResizedCenterCropTransform(32, OTHER_MEAN, OTHER_STD, pre_size=40))),
], ids=['random_resized', 'pre_resized'])
@pytest.mark.parametrize('flip', [False, True])
def test_from_recipe_builds_the_transforms_the_recipe_names(augmentation, by_hand, flip):
    # Every field differs from the defaults, so a field left out would show.
    recipe = dataclasses.replace(
        recipes.get('demo'), augmentation=augmentation, crop_size=32, crop_area_min=0.35,
        pre_resize_size=40, horizontal_flip=flip, mean=OTHER_MEAN, std=OTHER_STD).validate()
    got = transforms.from_recipe(recipe)
    expected = by_hand(flip)
    assert len(got) == 2
    image = random_image(50, 70)
    for made, wanted in zip(got, expected):
        assert type(made) is type(wanted)
        assert vars(made) == vars(wanted)
        numpy.testing.assert_array_equal(made(image, numpy.random.default_rng(3)),
                                         wanted(image, numpy.random.default_rng(3)))
    # Negative control: the other flip setting is a different transform.
    assert vars(got[0]) != vars(by_hand(not flip)[0])


# ---------------------------------------------------------------------------
# PIL-image input and uint8 output: the same pixels as the float32 array path

def old_train_transform(image, rng, crop, flip=True):
    """TrainTransform as it was before it took PIL images, written out: crop
    the RGB array, resize the crop in PIL, flip, five float32 passes."""
    top, left, h, w = transforms.sample_crop_box(
        image.shape[0], image.shape[1], (0.08, 1.0), (3 / 4, 4 / 3), rng)
    out = numpy.asarray(Image.fromarray(numpy.ascontiguousarray(
        image[top:top + h, left:left + w])).resize((crop, crop), Image.BILINEAR))
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    x = out.astype(numpy.float32) / numpy.float32(255)
    x -= numpy.asarray(MEAN, dtype=numpy.float32)
    x /= numpy.asarray(STD, dtype=numpy.float32)
    return numpy.ascontiguousarray(x.transpose(2, 0, 1))


def photo(mode, h=60, w=80, seed=0):
    """A textured PIL image in `mode` (smooth gradients plus noise)."""
    rng = numpy.random.default_rng(seed)
    y, x = numpy.mgrid[0:h, 0:w]
    rgb = numpy.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (h + w)], axis=-1)
    rgb = numpy.clip(rgb + rng.integers(-40, 40, rgb.shape), 0, 255).astype(numpy.uint8)
    image = Image.fromarray(rgb)
    if mode == 'RGBA':
        image.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=numpy.uint8)))
        return image
    return image if mode == 'RGB' else image.convert(mode)


MODES = ['RGB', 'L', 'P', 'CMYK', 'RGBA']


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('make', ALL_TRANSFORMS)
def test_pil_input_gives_the_pixels_of_the_rgb_array(make, mode):
    # The transforms cut a PIL image before converting it; the conversion is
    # per pixel, so the output is that of the whole image converted first.
    image = photo(mode)
    t = make()
    for seed in range(8):
        numpy.testing.assert_array_equal(
            t(image, numpy.random.default_rng(seed)),
            t(numpy.asarray(image.convert('RGB')), numpy.random.default_rng(seed)))


@pytest.mark.parametrize('mode', ['RGB', 'L', 'CMYK'])
def test_train_transform_on_jpeg_files_equals_the_earlier_code(tmp_path, mode):
    from chainer_resnet.data import layouts
    path = str(tmp_path / 'photo.jpg')
    photo(mode, 90, 120, seed=3).save(path, quality=85)
    decoded = layouts.read_image(path, as_array=False)
    assert decoded.mode == mode
    t = transforms.TrainTransform(32, MEAN, STD)
    for seed in range(20):
        expected = old_train_transform(layouts.read_image(path),
                                       numpy.random.default_rng(seed), 32)
        for image in (decoded, layouts.read_image(path)):
            numpy.testing.assert_array_equal(t(image, numpy.random.default_rng(seed)),
                                             expected)


@pytest.mark.parametrize('index', range(len(ALL_TRANSFORMS)))
def test_uint8_output_normalizes_to_the_float32_output(index):
    as_float, as_uint8 = ALL_TRANSFORMS[index](), ALL_TRANSFORMS[index]()
    as_uint8.normalized = False
    for seed, image in enumerate([random_image(37, 53), photo('L')]):
        x = as_uint8(image, numpy.random.default_rng(seed))
        assert x.dtype == numpy.uint8 and x.shape == (3, 16, 16) and x.flags.c_contiguous
        expected = as_float(image, numpy.random.default_rng(seed))
        numpy.testing.assert_array_equal(transforms.normalize(x, MEAN, STD), expected)
        # the written-out formula, and a batch normalised at once
        numpy.testing.assert_array_equal(
            normalized(numpy.asarray(x).transpose(1, 2, 0)), expected)
        numpy.testing.assert_array_equal(
            transforms.normalize(numpy.stack([x, x]), MEAN, STD)[1], expected)


def test_uint8_transforms_draw_the_same_boxes_and_flips():
    image = random_image(50, 70)
    for make in (lambda n: transforms.TrainTransform(8, MEAN, STD, normalize=n),
                 lambda n: transforms.PreResizedRandomCropTransform(8, MEAN, STD, pre_size=12,
                                                                    normalize=n)):
        for seed in range(30):
            a, b = numpy.random.default_rng(seed), numpy.random.default_rng(seed)
            numpy.testing.assert_array_equal(
                transforms.normalize(make(False)(image, a), MEAN, STD), make(True)(image, b))
            assert a.random() == b.random()      # and leave the generators alike


def test_pil_input_must_be_an_image_and_arrays_rgb_uint8():
    t = transforms.ValTransform(8, MEAN, STD)
    with pytest.raises(ValueError, match='or a PIL image, got list'):
        t([[0, 0, 0]])
    assert t(photo('L')).shape == (3, 8, 8)


@pytest.mark.parametrize('augmentation', ['random_resized', 'pre_resized'])
def test_from_recipe_normalize_false_gives_the_uint8_pair(augmentation):
    recipe = dataclasses.replace(recipes.get('demo'), augmentation=augmentation).validate()
    as_float = transforms.from_recipe(recipe)
    as_uint8 = transforms.from_recipe(recipe, normalize=False)
    image = random_image(50, 70)
    for f, u in zip(as_float, as_uint8):
        assert type(f) is type(u) and f.normalized and not u.normalized
        assert dict(vars(f), normalized=False) == vars(u)
        x = u(image, numpy.random.default_rng(4))
        assert x.dtype == numpy.uint8
        numpy.testing.assert_array_equal(transforms.normalize(x, recipe.mean, recipe.std),
                                         f(image, numpy.random.default_rng(4)))


@pytest.mark.parametrize('h, w', [(300, 451), (451, 300), (257, 257), (259, 400), (301, 263)])
@pytest.mark.parametrize('rounding', ['round', 'torchvision'])
def test_val_transform_rounding_written_out(h, w, rounding):
    # 'torchvision': Resize(256) + CenterCrop(224): the longer side int(256 * long /
    # short), the offsets round((side - 224) / 2). 'round': round() and floor.
    image = numpy.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=numpy.uint8)
    if rounding == 'torchvision':
        size = (256, int(256 * w / h)) if h <= w else (int(256 * h / w), 256)
        top, left = round((size[0] - 224) / 2), round((size[1] - 224) / 2)
    else:
        size = (256, int(round(w * 256 / h))) if h <= w else (int(round(h * 256 / w)), 256)
        top, left = (size[0] - 224) // 2, (size[1] - 224) // 2
    resized = numpy.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR))
    expected = resized[top:top + 224, left:left + 224].transpose(2, 0, 1)
    t = transforms.ValTransform(224, MEAN, STD, normalize=False, rounding=rounding)
    assert t.resized_size(h, w) == size and t.offsets(size) == (top, left)
    numpy.testing.assert_array_equal(t(image), expected)
    # The recipe field picks the rule.
    recipe = dataclasses.replace(recipes.AKIBA2017, val_resize_rounding=rounding)
    assert transforms.from_recipe(recipe)[1].rounding == rounding
