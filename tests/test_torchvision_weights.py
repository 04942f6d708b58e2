"""chainer_resnet.torchvision_weights without torch: names, the eps shift, .safetensors.

Against torchvision itself (its model loads what we write, and we load what
it writes): tests/test_reference.py, in the reference virtualenv.
"""

import json
import struct

import numpy
import pytest

from chainer.serializers import npz

from chainer_resnet import model_file, recipes, resnet, torchvision_weights


def torchvision_resnet50_names():
    """torchvision's resnet50 state-dict names, written out from its architecture."""
    bn = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
    names = ['conv1.weight'] + ['bn1.' + f for f in bn]
    for layer, blocks in enumerate((3, 4, 6, 3), start=1):
        for i in range(blocks):
            p = 'layer{}.{}.'.format(layer, i)
            for j in (1, 2, 3):
                names += [p + 'conv{}.weight'.format(j)] + [p + 'bn{}.{}'.format(j, f)
                                                             for f in bn]
            if i == 0:
                names += [p + 'downsample.0.weight'] + [p + 'downsample.1.' + f for f in bn]
    return names + ['fc.weight', 'fc.bias']


@pytest.fixture(scope='module')
def arrays():
    numpy.random.seed(0)
    predictor = resnet.from_recipe(recipes.AKIBA2017)
    values = npz.serialize(predictor)
    rng = numpy.random.RandomState(2)
    for name in values:
        if name.endswith('/var'):
            values[name] = rng.uniform(1e-4, 1, values[name].shape).astype(numpy.float32)
    return values


def test_every_name_maps_to_torchvisions(arrays):
    state = torchvision_weights.to_torchvision(arrays, model_file.architecture(
        recipes.AKIBA2017))
    assert sorted(state) == sorted(torchvision_resnet50_names())
    assert len(state) == 320
    assert state['layer3.0.downsample.0.weight'].shape == (1024, 512, 1, 1)
    numpy.testing.assert_array_equal(state['layer4.2.conv2.weight'], arrays['res5/2/conv2/W'])
    numpy.testing.assert_array_equal(state['fc.bias'], arrays['fc/b'])


def test_variances_move_by_the_eps_difference_both_ways(arrays):
    arch = model_file.architecture(recipes.AKIBA2017)       # eps 2e-5
    state = torchvision_weights.to_torchvision(arrays, arch)
    ours, theirs = arrays['res4/1/bn2/var'], state['layer3.1.bn2.running_var']
    # var + 1e-5 there equals var + 2e-5 here (to float32 rounding).
    numpy.testing.assert_allclose(theirs.astype(numpy.float64) + 1e-5,
                                  ours.astype(numpy.float64) + 2e-5, rtol=1e-7)
    assert (theirs > ours).all()
    # Negative control: a model that already has eps 1e-5 is not shifted.
    same = torchvision_weights.to_torchvision(arrays, dict(arch, bn_eps=1e-5))
    numpy.testing.assert_array_equal(same['layer3.1.bn2.running_var'], ours)
    back = torchvision_weights.from_torchvision(same, dict(arch, bn_eps=1e-5))
    for name in arrays:
        numpy.testing.assert_array_equal(back[name], arrays[name], err_msg=name)
    # Into eps 2e-5 the variances move down; below zero they are clipped and counted.
    moved, clipped = torchvision_weights.shift_variances(
        {'bn1/var': numpy.array([5e-6, 1.0], numpy.float32)}, 1e-5, 2e-5)
    assert clipped == 1
    numpy.testing.assert_allclose(moved['bn1/var'], [0.0, 1.0 - 1e-5], rtol=1e-7)


def test_v1_is_refused_for_torchvision(arrays):
    arch = dict(model_file.architecture(recipes.AKIBA2017), variant='v1')
    with pytest.raises(ValueError, match='ONNX instead'):
        torchvision_weights.to_torchvision(arrays, arch)


def test_safetensors_written_to_the_format_and_read_back(arrays, tmp_path):
    state = torchvision_weights.to_torchvision(arrays, model_file.architecture(
        recipes.AKIBA2017))
    path = str(tmp_path / 'm.safetensors')
    torchvision_weights.write(path, state)
    raw = open(path, 'rb').read()
    (size,) = struct.unpack('<Q', raw[:8])
    header = json.loads(raw[8:8 + size])
    assert size % 8 == 0
    entry = header['fc.weight']
    begin, end = entry['data_offsets']
    assert entry['dtype'] == 'F32' and entry['shape'] == [1000, 2048]
    numpy.testing.assert_array_equal(
        numpy.frombuffer(raw[8 + size + begin:8 + size + end], '<f4').reshape(1000, 2048),
        state['fc.weight'])
    assert header['bn1.num_batches_tracked']['dtype'] == 'I64'
    back = torchvision_weights.read_state(path)
    assert sorted(back) == sorted(state)
    for name in state:
        numpy.testing.assert_array_equal(back[name], state[name])
    # As a model file: torchvision's eps and preprocessing, classes from the weights.
    loaded, description = torchvision_weights.read(path)
    assert description['architecture']['bn_eps'] == 1e-5
    assert description['architecture']['num_classes'] == 1000
    assert description['preprocessing']['resize_size'] == 256
    numpy.testing.assert_allclose(loaded['bn1/var'], state['bn1.running_var'])


def test_not_a_resnet50_state_dict(tmp_path):
    path = str(tmp_path / 'x.safetensors')
    torchvision_weights.write(path, {'fc.weight': numpy.zeros((3, 2048), numpy.float32)})
    with pytest.raises(model_file.ModelFileError, match='entries missing'):
        model_file.read(path)
    torchvision_weights.write(path, {'w': numpy.zeros(2, numpy.float32)})
    with pytest.raises(model_file.ModelFileError, match='no fc.weight'):
        model_file.read(path)
