"""chainer_resnet.data.ten_crop: the ten crops are slices of the resized image."""

import numpy
from PIL import Image

from chainer_resnet.data import ten_crop, transforms

MEAN, STD = transforms.IMAGENET_MEAN, transforms.IMAGENET_STD


def test_ten_crops_are_the_corners_centre_and_mirrors_of_the_resized_image():
    rng = numpy.random.default_rng(0)
    image = rng.integers(0, 256, (37, 51, 3), dtype=numpy.uint8)
    t = ten_crop.TenCropTransform(16, MEAN, STD, resize_ratio=18 / 16, normalize=False,
                                  rounding='torchvision')
    crops = t(image)
    assert crops.shape == (10, 3, 16, 16) and crops.dtype == numpy.uint8
    # Written out: shorter side 18, longer int(18 * 51 / 37) = 24, PIL bilinear.
    resized = numpy.asarray(Image.fromarray(image).resize((24, 18), Image.BILINEAR))
    resized = resized.transpose(2, 0, 1)
    top, left = round((18 - 16) / 2), round((24 - 16) / 2)
    boxes = [(0, 0), (0, 8), (2, 0), (2, 8), (top, left)]
    for k, (y, x) in enumerate(boxes):
        window = resized[:, y:y + 16, x:x + 16]
        numpy.testing.assert_array_equal(crops[k], window)
        mirrored = resized[:, :, ::-1][:, y:y + 16, x:x + 16]
        numpy.testing.assert_array_equal(crops[5 + k], mirrored)
    # The centre crop is the validation transform's.
    numpy.testing.assert_array_equal(crops[4], transforms.ValTransform(
        16, MEAN, STD, resize_ratio=18 / 16, normalize=False, rounding='torchvision')(image))
    normalized = ten_crop.TenCropTransform(16, MEAN, STD, resize_ratio=18 / 16,
                                           rounding='torchvision')(image)
    # The default rule ('round') resizes to 18 x round(24.8) = 25 and floors the offsets.
    centre = ten_crop.TenCropTransform(16, MEAN, STD, resize_ratio=18 / 16,
                                       normalize=False)(image)[4]
    wide = numpy.asarray(Image.fromarray(image).resize((25, 18), Image.BILINEAR))
    numpy.testing.assert_array_equal(centre, wide.transpose(2, 0, 1)[:, 1:17, 4:20])
    numpy.testing.assert_array_equal(normalized, transforms.normalize(crops, MEAN, STD))
