import numpy
import pytest

import chainer
import chainer.functions as F
import chainer.links as L

from chainer_resnet.resnet import Bottleneck, ResNet, ResNet50

# Stored regression numbers: torchvision / Keras / Caffe ResNet-50 at 1,000 classes.
RESNET50_PARAMS_1000 = 25557032
RESNET50_PARAMS_10 = 23528522


def expected_param_count(n_class):
    """ResNet-50 parameter count written out from the architecture (He et al. 2016, Table 1)."""
    count = 7 * 7 * 3 * 64 + 2 * 64  # conv1 + bn1
    in_channels = 64
    for n_blocks, width in zip((3, 4, 6, 3), (64, 128, 256, 512)):
        out = 4 * width
        for i in range(n_blocks):
            count += in_channels * width + 2 * width          # 1x1 conv + BN
            count += 9 * width * width + 2 * width            # 3x3 conv + BN
            count += width * out + 2 * out                    # 1x1 conv + BN
            if i == 0:
                count += in_channels * out + 2 * out          # projection conv + BN
            in_channels = out
    return count + 2048 * n_class + n_class                   # fc with bias


@pytest.fixture(scope='module')
def model():
    return ResNet50()


def convs(model):
    return [(name, link) for name, link in model.namedlinks()
            if isinstance(link, L.Convolution2D)]


def blocks(model):
    return [block for stage in (model.res2, model.res3, model.res4, model.res5)
            for block in stage]


@pytest.mark.parametrize('variant', ['v1.5', 'v1'])
def test_parameter_count_1000_classes(variant):
    assert expected_param_count(1000) == RESNET50_PARAMS_1000
    assert ResNet50(variant=variant).count_params() == RESNET50_PARAMS_1000


def test_parameter_count_10_classes():
    assert expected_param_count(10) == RESNET50_PARAMS_10
    assert ResNet50(n_class=10).count_params() == RESNET50_PARAMS_10


def test_structure(model):
    assert [len(stage) for stage in (model.res2, model.res3, model.res4, model.res5)] == \
        [3, 4, 6, 3]
    assert [block.projection for block in blocks(model)] == \
        [True, False, False, True, False, False, False,
         True, False, False, False, False, False, True, False, False]
    assert model.fc.W.shape == (1000, 2048) and model.fc.b is not None
    assert isinstance(model, ResNet)


def test_output_shape_64x64(model):
    x = numpy.random.RandomState(0).rand(2, 3, 64, 64).astype(numpy.float32)
    with chainer.using_config('train', False):
        y = model(x)
    assert y.shape == (2, 1000)
    assert numpy.isfinite(y.array).all()


def test_output_shape_32x32_10_classes():
    x = numpy.random.RandomState(0).rand(2, 3, 32, 32).astype(numpy.float32)
    y = ResNet50(n_class=10)(x)
    assert y.shape == (2, 10)


def test_v1_and_v1_5_differ_only_in_stride_position():
    v15 = ResNet50(variant='v1.5')
    v1 = ResNet50(variant='v1')
    b15, b1 = v15.res3[0], v1.res3[0]
    assert (b15.conv1.stride, b15.conv2.stride) == ((1, 1), (2, 2))
    assert (b1.conv1.stride, b1.conv2.stride) == ((2, 2), (1, 1))
    assert b15.shortcut_conv.stride == b1.shortcut_conv.stride == (2, 2)

    moved = {'/res{}/0/{}'.format(stage, conv) for stage in (3, 4, 5)
             for conv in ('conv1', 'conv2')}
    convs15, convs1 = dict(convs(v15)), dict(convs(v1))
    assert convs15.keys() == convs1.keys()
    for name in convs15:
        assert convs15[name].W.shape == convs1[name].W.shape
        if name in moved:
            assert convs15[name].stride != convs1[name].stride, name
        else:
            assert convs15[name].stride == convs1[name].stride, name
    assert {n: p.shape for n, p in v15.namedparams()} == \
        {n: p.shape for n, p in v1.namedparams()}


def test_invalid_variant_raises():
    with pytest.raises(ValueError, match="'v2'"):
        ResNet50(variant='v2')
    with pytest.raises(ValueError, match="'v2'"):
        Bottleneck(64, 64, 256, variant='v2')


def test_zero_init_residual_sets_last_gamma_to_zero(model):
    for block in blocks(model):
        assert (block.bn3.gamma.array == 0).all()
        assert (block.bn1.gamma.array == 1).all() and (block.bn2.gamma.array == 1).all()
        if block.projection:
            assert (block.shortcut_bn.gamma.array == 1).all()
    assert (model.bn1.gamma.array == 1).all()


def test_zero_init_residual_off_keeps_gamma_one():
    model = ResNet50(n_class=10, zero_init_residual=False)
    for block in blocks(model):
        assert (block.bn3.gamma.array == 1).all()


@pytest.mark.parametrize('train', [True, False])
def test_zero_gamma_block_is_identity_on_nonnegative_input(train):
    # With γ = β = 0 in bn3 the residual branch is exactly 0, so the block is relu(x) = x.
    block = Bottleneck(256, 64, 256)
    assert not block.projection
    assert (block.bn3.beta.array == 0).all()
    x = numpy.random.RandomState(1).rand(2, 256, 8, 8).astype(numpy.float32)
    with chainer.using_config('train', train):
        y = block(x)
    numpy.testing.assert_array_equal(y.array, x)

    control = Bottleneck(256, 64, 256, zero_init_residual=False)
    with chainer.using_config('train', train):
        assert not numpy.allclose(control(x).array, x)


def test_zero_init_needs_a_gamma():
    def no_gamma_bn(size):
        return L.BatchNormalization(size, use_gamma=False)

    with pytest.raises(ValueError, match='gamma'):
        Bottleneck(256, 64, 256, bn=no_gamma_bn)
    Bottleneck(256, 64, 256, bn=no_gamma_bn, zero_init_residual=False)


def test_bn_factory_builds_every_bn():
    made = []

    class CountingBN(L.BatchNormalization):
        pass

    def bn(size):
        link = CountingBN(size, decay=0.5)
        made.append(link)
        return link

    model = ResNet50(n_class=10, bn=bn)
    assert len(made) == 53  # 1 + 16 blocks * 3 + 4 projections
    in_model = [link for _, link in model.namedlinks()
                if isinstance(link, L.BatchNormalization)]
    assert len(in_model) == 53
    assert all(isinstance(link, CountingBN) for link in in_model)
    assert {id(link) for link in in_model} == {id(link) for link in made}


def test_convs_are_he_normal_without_bias(model):
    for name, conv in convs(model):
        assert conv.b is None, name
    for conv in (model.res5[0].conv2, model.res4[2].conv2, model.res5[1].conv3, model.conv1):
        out_channels, in_channels, kh, kw = conv.W.shape
        fan_in = in_channels * kh * kw
        std = float(conv.W.array.std())
        assert abs(std / numpy.sqrt(2.0 / fan_in) - 1) < 0.1, (conv.W.shape, std)
        assert abs(float(conv.W.array.mean())) < 0.1 * std


def test_initialW_overrides_he_normal():
    model = ResNet50(n_class=10, initialW=chainer.initializers.Constant(0.5))
    for name, conv in convs(model):
        assert (conv.W.array == 0.5).all(), name


@pytest.mark.parametrize('zero_init_residual', [True, False])
def test_backward_gives_gradients_for_all_params(zero_init_residual):
    model = ResNet50(n_class=10, zero_init_residual=zero_init_residual)
    rng = numpy.random.RandomState(2)
    x = rng.rand(2, 3, 32, 32).astype(numpy.float32)
    t = numpy.array([1, 7], dtype=numpy.int32)
    model.cleargrads()
    F.softmax_cross_entropy(model(x), t).backward()
    for name, param in model.namedparams():
        assert param.grad is not None, name
        assert numpy.isfinite(param.grad).all(), name
        if not zero_init_residual:
            assert (param.grad != 0).any(), name
    for block in blocks(model):
        # γ of bn3 must get a gradient even when it starts at 0, or it would stay 0.
        assert (block.bn3.gamma.grad != 0).any()


def test_stage_names_follow_block_order(model):
    # Serialized names must match block indices (chainer.Sequential breaks this in 7.8.1).
    names = {id(link): name for name, link in model.namedlinks()}
    for stage_name in ('res2', 'res3', 'res4', 'res5'):
        stage = getattr(model, stage_name)
        for i, block in enumerate(stage):
            assert names[id(block)] == '/{}/{}'.format(stage_name, i)


def test_from_recipe_takes_bn_variant_and_classes_from_the_recipe():
    from chainer_resnet import recipes, resnet
    from chainer_resnet.batch_normalization import LastBatchNormalization
    paper = resnet.from_recipe(recipes.resolve('demo', ['resnet_variant=v1']))
    assert paper.fc.b.shape == (10,) and paper.variant == 'v1'
    kinds = {type(link) for _, link in paper.namedlinks()}
    assert LastBatchNormalization in kinds and L.BatchNormalization not in kinds
    goyal = resnet.from_recipe(recipes.resolve('demo', ['batch_norm=moving_average',
                                                        'zero_init_residual=false']))
    kinds = {type(link) for _, link in goyal.namedlinks()}
    assert L.BatchNormalization in kinds and LastBatchNormalization not in kinds
    gammas = [link.gamma.array for _, link in goyal.namedlinks()
              if isinstance(link, L.BatchNormalization)]
    assert all((g == 1).all() for g in gammas)      # zero-gamma off
