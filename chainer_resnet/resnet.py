"""ResNet-50 (He et al. 2016) in the two variants Akiba et al. (2017) could have used.

Architecture (``docs/method.md`` §4): conv1 7×7/2 (64) + BN + ReLU, 3×3/2 max-pool, four stages of
bottleneck blocks (3, 4, 6, 3 blocks; widths 64, 128, 256, 512; expansion 4), global average
pool, fully connected layer with bias. The first block of every stage has a projection shortcut
(1×1 conv + BN); all other shortcuts are the identity.

Variants, which differ only in where the stride-2 of the first block of stages 3–5 sits:

- ``'v1.5'`` (default; Goyal et al. 2017, fb.resnet.torch): on the 3×3 conv.
- ``'v1'`` (the Chainer ImageNet example of 2017, the original Caffe model): on the first 1×1 conv.

Both have exactly 25,557,032 parameters for 1,000 classes.

Every BN link is built by the ``bn`` factory the caller passes (``bn(size) -> link``), so the
paper's BN without moving averages
(:class:`chainer_resnet.batch_normalization.LastBatchNormalization`) or any other BN link plugs
in without flags.
"""

import chainer
import chainer.functions as F
import chainer.links as L

from chainer_resnet.batch_normalization import LastBatchNormalization

VARIANTS = ('v1', 'v1.5')
RESNET50_BLOCK_COUNTS = (3, 4, 6, 3)
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4


def default_bn(size):
    """Chainer's own ``L.BatchNormalization(size)`` with its defaults (decay 0.9, eps 2e-5)."""
    return L.BatchNormalization(size)


def _check_variant(variant):
    if variant not in VARIANTS:
        raise ValueError(
            'ResNet variant {!r} is not known; use one of {} ("v1.5": stride 2 on the 3x3 conv, '
            '"v1": stride 2 on the first 1x1 conv).'
            .format(variant, ', '.join(map(repr, VARIANTS))))


def _zero_gamma(link):
    gamma = getattr(link, 'gamma', None)
    if not isinstance(gamma, chainer.Parameter) or gamma.array is None:
        raise ValueError(
            'zero_init_residual=True needs BN links with an initialised `gamma` parameter, but '
            'the bn factory returned a {} without one. Pass zero_init_residual=False or a bn '
            'factory whose links have gamma.'.format(type(link).__name__))
    gamma.array[...] = 0


class Bottleneck(chainer.Chain):
    """Bottleneck residual block: 1×1 → 3×3 → 1×1 convs, each followed by BN, plus a shortcut.

    ``y = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))``, where the
    shortcut is ``shortcut_bn(shortcut_conv(x))`` when ``in_channels != out_channels`` or
    ``stride != 1``, and ``x`` otherwise.

    Args:
        in_channels (int): Input channels.
        mid_channels (int): Channels of the 1×1 reduction and the 3×3 conv.
        out_channels (int): Output channels (``EXPANSION * mid_channels`` in ResNet-50).
        stride (int): Stride of the block; 1 or 2.
        variant (str): ``'v1.5'`` puts ``stride`` on the 3×3 conv, ``'v1'`` on the first 1×1 conv.
        bn (callable or None): ``bn(size) -> link``, called for every BN of the block;
            ``None`` means :func:`default_bn`.
        initialW: Initializer of every conv weight (an initializer, not an array).
        zero_init_residual (bool): Set γ of ``bn3`` to 0, so the residual branch outputs
            ``bn3``'s β (0 by default) at initialisation (Goyal et al. 2017, §5.1).
    """

    def __init__(self, in_channels, mid_channels, out_channels, *, stride=1,
                 variant='v1.5', bn=None, initialW=None, zero_init_residual=True):
        super().__init__()
        _check_variant(variant)
        if bn is None:
            bn = default_bn
        stride_1x1, stride_3x3 = (1, stride) if variant == 'v1.5' else (stride, 1)
        if initialW is None:
            initialW = chainer.initializers.HeNormal()
        self.projection = in_channels != out_channels or stride != 1
        with self.init_scope():
            self.conv1 = L.Convolution2D(in_channels, mid_channels, ksize=1, stride=stride_1x1,
                                         nobias=True, initialW=initialW)
            self.bn1 = bn(mid_channels)
            self.conv2 = L.Convolution2D(mid_channels, mid_channels, ksize=3, stride=stride_3x3,
                                         pad=1, nobias=True, initialW=initialW)
            self.bn2 = bn(mid_channels)
            self.conv3 = L.Convolution2D(mid_channels, out_channels, ksize=1, nobias=True,
                                         initialW=initialW)
            self.bn3 = bn(out_channels)
            if self.projection:
                self.shortcut_conv = L.Convolution2D(in_channels, out_channels, ksize=1,
                                                     stride=stride, nobias=True,
                                                     initialW=initialW)
                self.shortcut_bn = bn(out_channels)
        if zero_init_residual:
            _zero_gamma(self.bn3)

    def forward(self, x):
        """Apply the block to ``x`` of shape (N, in_channels, H, W)."""
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        shortcut = self.shortcut_bn(self.shortcut_conv(x)) if self.projection else x
        return F.relu(h + shortcut)


class Stage(chainer.ChainList):
    """A sequence of blocks applied in order; block ``i`` is ``stage[i]`` and is named ``'i'``.

    Not ``chainer.Sequential``: in Chainer 7.8.1 it inserts every link after the first at
    position 1 of its children, so there the serialized name ``'1'`` belongs to the last block.
    """

    def forward(self, x):
        """Apply every block in turn."""
        for block in self:
            x = block(x)
        return x


class ResNet(chainer.Chain):
    """Bottleneck ResNet for ImageNet-style inputs (N, 3, H, W); returns logits (N, n_class).

    Attributes are ``conv1``, ``bn1``, the stages ``res2`` … ``res5`` (each a :class:`Stage` of
    :class:`Bottleneck` blocks, so ``/res3/0/conv2`` is the 3×3 conv of res3's first block) and
    ``fc``.

    Args:
        block_counts (tuple of 4 ints): Blocks per stage; ``(3, 4, 6, 3)`` is ResNet-50.
        n_class (int): Number of classes.
        variant (str): ``'v1.5'`` (default) or ``'v1'``; see the module docstring.
        zero_init_residual (bool): Initialise γ of the last BN of every block to 0 (default on).
            Works for any BN link with a ``gamma`` parameter.
        bn (callable or None): ``bn(size) -> link`` used for every BN in the network;
            ``None`` means :func:`default_bn` (Chainer's ``L.BatchNormalization`` with defaults).
        initialW: Initializer of every conv weight; ``None`` means
            ``chainer.initializers.HeNormal()`` (normal, std ``sqrt(2 / fan_in)``). Convs have no
            bias since a BN follows each.

    The fully connected layer keeps Chainer's ``L.Linear`` defaults: LeCun normal weights
    (std ``1 / sqrt(2048)``) and zero bias. Neither paper we follow states its FC initialisation
    as a requirement of the method, so we do not deviate from the framework default.

    Input sizes down to 32×32 work (the last feature map is then 1×1).
    """

    def __init__(self, block_counts=RESNET50_BLOCK_COUNTS, n_class=1000, *, variant='v1.5',
                 zero_init_residual=True, bn=None, initialW=None):
        super().__init__()
        _check_variant(variant)
        if len(block_counts) != len(STAGE_WIDTHS) or min(block_counts) < 1:
            raise ValueError('block_counts must be 4 positive ints (one per stage), got {!r}'
                             .format(block_counts))
        if bn is None:
            bn = default_bn
        if initialW is None:
            initialW = chainer.initializers.HeNormal()
        self.variant = variant
        self.block_counts = tuple(block_counts)
        in_channels = 64
        with self.init_scope():
            self.conv1 = L.Convolution2D(3, 64, ksize=7, stride=2, pad=3, nobias=True,
                                         initialW=initialW)
            self.bn1 = bn(64)
            for stage, (n_blocks, width) in enumerate(zip(block_counts, STAGE_WIDTHS)):
                out_channels = width * EXPANSION
                blocks = []
                for i in range(n_blocks):
                    # res2 follows the max-pool, so only res3..res5 downsample.
                    stride = 2 if i == 0 and stage > 0 else 1
                    blocks.append(Bottleneck(
                        in_channels, width, out_channels, stride=stride, variant=variant, bn=bn,
                        initialW=initialW, zero_init_residual=zero_init_residual))
                    in_channels = out_channels
                setattr(self, 'res{}'.format(stage + 2), Stage(*blocks))
            self.fc = L.Linear(in_channels, n_class)

    def forward(self, x):
        """Return the logits (N, n_class) for images ``x`` of shape (N, 3, H, W)."""
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.max_pooling_2d(h, ksize=3, stride=2, pad=1, cover_all=False)
        h = self.res2(h)
        h = self.res3(h)
        h = self.res4(h)
        h = self.res5(h)
        h = F.average(h, axis=(2, 3))
        return self.fc(h)


class ResNet50(ResNet):
    """ResNet-50: :class:`ResNet` with blocks (3, 4, 6, 3); 25,557,032 parameters at 1,000 classes.

    Args:
        n_class (int): Number of classes.
        variant (str): ``'v1.5'`` (default, stride on the 3×3 conv) or ``'v1'`` (on the 1×1).
        zero_init_residual (bool): γ of the last BN in each block starts at 0 (default on).
        bn (callable or None): ``bn(size) -> link`` for every BN (53 of them).
        initialW: Conv weight initializer; default He normal (fan-in).
    """

    def __init__(self, n_class=1000, *, variant='v1.5', zero_init_residual=True, bn=None,
                 initialW=None):
        super().__init__(RESNET50_BLOCK_COUNTS, n_class, variant=variant,
                         zero_init_residual=zero_init_residual, bn=bn, initialW=initialW)


def from_recipe(recipe):
    """The recipe's ResNet-50: variant, zero-γ and classes from the recipe, and its BN link.

    ``recipe.batch_norm == 'last_batch'``: the paper's BN without moving averages
    (:class:`~chainer_resnet.batch_normalization.LastBatchNormalization`, ``docs/method.md`` §3);
    ``'moving_average'``: Chainer's ``L.BatchNormalization`` (:func:`default_bn`). Weights are
    drawn from NumPy's global generator: seed it first for a reproducible initialisation.
    """
    bn = LastBatchNormalization if recipe.batch_norm == 'last_batch' else default_bn
    return ResNet50(n_class=recipe.num_classes, variant=recipe.resnet_variant,
                    zero_init_residual=recipe.zero_init_residual, bn=bn)
