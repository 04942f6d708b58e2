"""Ten-crop evaluation: the four corners and the centre, and their mirror images.

:class:`TenCropTransform` resizes as :class:`~chainer_resnet.data.transforms.ValTransform`
does (shorter side ``round(crop_size * resize_ratio)``, its ``rounding``) and returns the ten
crops of Krizhevsky et al. (2012) in torchvision's ``TenCrop`` order: top-left,
top-right, bottom-left, bottom-right, centre, then the same five of the
mirrored image; shape (10, 3, crop, crop). A model's ten outputs are then
averaged (:class:`chainer_resnet.evaluate.CropAverage`).
"""

import numpy

from chainer_resnet.data import transforms


class TenCropTransform(transforms.ValTransform):
    """Resize the shorter side, then ten crops (see the module docstring).

    Same arguments as :class:`~chainer_resnet.data.transforms.ValTransform`;
    ``normalize=False`` gives ``uint8`` crops for
    :class:`~chainer_resnet.data.loader.Normalize` (which takes (N, 3, H, W):
    reshape the batch of (10, 3, H, W) first).
    """

    def __call__(self, image, rng=None):
        transforms._check_image(image)
        height, width = transforms._height_width(image)
        size = self.resized_size(height, width)
        out = transforms._resize(transforms._rgb(image), size)
        c = self.crop_size
        centre = self.offsets(size)
        boxes = [(0, 0), (0, size[1] - c), (size[0] - c, 0), (size[0] - c, size[1] - c),
                 centre]
        crops = [self._output(transforms._crop(out, top, left, c), flip=flip)
                 for flip in (False, True)
                 for top, left in (boxes if not flip else
                                   [(t, size[1] - c - x) for t, x in boxes])]
        return numpy.stack(crops)
