"""Our model, exports and evaluation geometry against independent implementations.

torchvision's ResNet-50 (the model code, its ``load_state_dict``, its
``Resize``/``CenterCrop``/``TenCrop``), onnxruntime and the ``safetensors``
package are the oracles; none of their code is ours. They live in the
reference virtualenv (``make test-reference``: torch, torchvision, onnx,
onnxruntime, safetensors), which sets ``CHAINER_RESNET_REFERENCE=1`` so that
a missing package fails instead of skipping; elsewhere the module is skipped.

Real photographs: scikit-image's sample photos, read from its wheel
(benchmarks/photos.py; downloaded once into the data cache).
"""

import functools
import os
import sys

import numpy
import pytest

import chainer
import chainer.functions as F
from chainer.serializers import npz

from chainer_resnet import export, model_file, onnx_graph, recipes, resnet, torchvision_weights
from chainer_resnet.batch_normalization import LastBatchNormalization
from chainer_resnet.data import ten_crop, transforms

if os.environ.get('CHAINER_RESNET_REFERENCE') == '1':
    import onnxruntime
    import safetensors.numpy
    import torch
    import torchvision
else:
    torch = pytest.importorskip('torch')
    torchvision = pytest.importorskip('torchvision')
    onnxruntime = pytest.importorskip('onnxruntime')
    pytest.importorskip('safetensors')
    import safetensors.numpy

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))
import photos as photo_tools  # noqa: E402

COLOUR_PHOTOS = ('astronaut.png', 'chelsea.png', 'coffee.png', 'rocket.jpg')


@pytest.fixture(scope='module')
def sources():
    from chainer_resnet.data.demo import default_data_dir
    return photo_tools.read_sources(photo_tools.fetch_wheel(default_data_dir()))


@pytest.fixture(scope='module')
def photo_batch(sources):
    """Four real photographs, shorter side 256 and centre 224, normalised: (4, 3, 224, 224)."""
    t = transforms.ValTransform(224, transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)
    return numpy.stack([t(sources[name][0]) for name in COLOUR_PHOTOS])


def tv_resnet50(variant, num_classes=1000):
    """torchvision's resnet50; for v1 its stride-2 convs moved from the 3x3 to the first 1x1."""
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if variant == 'v1':
        for layer in (model.layer2, model.layer3, model.layer4):
            layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    return model


def pairs(ours, theirs):
    """(our link, torchvision module) pairs, walked structurally (not by our converter)."""
    yield ours.conv1, theirs.conv1
    yield ours.bn1, theirs.bn1
    for stage, layer in zip((ours.res2, ours.res3, ours.res4, ours.res5),
                            (theirs.layer1, theirs.layer2, theirs.layer3, theirs.layer4)):
        for block, tv_block in zip(stage, layer):
            for name in ('conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3'):
                yield getattr(block, name), getattr(tv_block, name)
            if block.projection:
                yield block.shortcut_conv, tv_block.downsample[0]
                yield block.shortcut_bn, tv_block.downsample[1]
    yield ours.fc, theirs.fc


def trained_like(variant, x, num_classes=1000, dtype=numpy.float32):
    """Our ResNet-50 with random weights whose BN statistics are those of ``x`` (as after a
    training step), so every layer works at a realistic scale."""
    numpy.random.seed(3)
    with chainer.using_config('dtype', dtype):
        model = resnet.ResNet50(num_classes, variant=variant, zero_init_residual=False,
                                bn=functools.partial(LastBatchNormalization, dtype=dtype))
    rng = numpy.random.RandomState(4)
    for link in model.links():
        if isinstance(link, LastBatchNormalization):
            link.gamma.array[...] = rng.uniform(0.5, 1.5, link.gamma.shape)
            link.beta.array[...] = rng.uniform(-0.2, 0.2, link.beta.shape)
    with chainer.using_config('train', True):
        model(x.astype(dtype))
    return model


def eval_logits(model, x):
    with chainer.using_config('train', False), chainer.using_config('enable_backprop', False):
        return model(x).array


# --- the model itself ----------------------------------------------------------------

@pytest.mark.parametrize('variant', ['v1.5', 'v1'])
def test_model_equals_torchvision_forward_and_gradients_in_float64(variant):
    rng = numpy.random.RandomState(0)
    x = rng.standard_normal((4, 3, 40, 40))
    t = numpy.array([0, 3, 5, 9], dtype=numpy.int32)
    ours = trained_like(variant, x, num_classes=10, dtype=numpy.float64)
    theirs = tv_resnet50(variant, num_classes=10).double()
    for link, module in pairs(ours, theirs):
        if isinstance(link, LastBatchNormalization):
            module.eps = link.eps
            for name, value in (('weight', link.gamma.array), ('bias', link.beta.array),
                                ('running_mean', link.mean), ('running_var', link.var)):
                getattr(module, name).data.copy_(torch.from_numpy(value.copy()))
        else:
            module.weight.data.copy_(torch.from_numpy(link.W.array.copy()))
            if getattr(link, 'b', None) is not None:
                module.bias.data.copy_(torch.from_numpy(link.b.array.copy()))
    assert sum(p.numel() for p in theirs.parameters()) == ours.count_params()
    # Evaluation: stored statistics.
    theirs.eval()
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    numpy.testing.assert_allclose(eval_logits(ours, x), expected, rtol=1e-10, atol=1e-10)
    # Training: batch statistics, cross-entropy loss, every parameter's gradient.
    theirs.train()
    theirs.zero_grad()
    loss_t = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)),
                                               torch.from_numpy(t).long())
    loss_t.backward()
    ours.cleargrads()
    with chainer.using_config('train', True):
        loss = F.softmax_cross_entropy(ours(x), t)
    loss.backward()
    numpy.testing.assert_allclose(float(loss.array), float(loss_t.detach()), rtol=1e-12)
    compared = 0
    for link, module in pairs(ours, theirs):
        for ours_name, their_name in (('W', 'weight'), ('b', 'bias'), ('gamma', 'weight'),
                                      ('beta', 'bias')):
            param = getattr(link, ours_name, None)
            if isinstance(param, chainer.Parameter):
                grad = getattr(module, their_name).grad.numpy()
                scale = numpy.abs(grad).max()
                numpy.testing.assert_allclose(param.grad, grad, rtol=1e-7,
                                              atol=1e-10 * max(scale, 1e-30))
                compared += 1
    assert compared == 161
    # Negative control: the other variant's torchvision model computes something else.
    other = tv_resnet50('v1' if variant == 'v1.5' else 'v1.5', 10).double()
    other.load_state_dict(theirs.state_dict())
    other.eval()
    with torch.no_grad():
        assert numpy.abs(other(torch.from_numpy(x)).numpy() - expected).max() > 1e-3


# --- export and import ----------------------------------------------------------------

def test_torchvision_export_gives_the_chainer_logits_on_photographs(photo_batch, tmp_path):
    ours = trained_like('v1.5', photo_batch)
    expected = eval_logits(ours, photo_batch)
    arch = model_file.architecture(recipes.AKIBA2017)
    state = torchvision_weights.to_torchvision(npz.serialize(ours), arch)
    errors = {}
    for suffix in ('.pth', '.safetensors'):
        path = str(tmp_path / ('model' + suffix))
        torchvision_weights.write(path, state)
        loaded = (torch.load(path, weights_only=True) if suffix == '.pth' else
                  {k: torch.from_numpy(v) for k, v in safetensors.numpy.load_file(path).items()})
        tv = tv_resnet50('v1.5')
        tv.load_state_dict(loaded)          # strict: every name and shape
        tv.eval()
        with torch.no_grad():
            got = tv(torch.from_numpy(photo_batch)).numpy()
        errors[suffix] = numpy.abs(got - expected).max() / numpy.abs(expected).max()
        assert errors[suffix] < 1e-4, (suffix, errors)
        assert (got.argmax(1) == expected.argmax(1)).all()
    # Negative control: without the eps shift (2e-5 -> 1e-5) the logits move far more.
    unshifted = dict(state, **{k: v for k, v in torchvision_weights.to_torchvision(
        npz.serialize(ours), dict(arch, bn_eps=1e-5)).items() if k.endswith('running_var')})
    tv.load_state_dict({k: torch.from_numpy(v) for k, v in unshifted.items()})
    with torch.no_grad():
        off = numpy.abs(tv(torch.from_numpy(photo_batch)).numpy() - expected).max()
    assert off / numpy.abs(expected).max() > 20 * errors['.pth'], (off, errors)


@pytest.mark.parametrize('variant', ['v1.5', 'v1'])
def test_onnx_export_gives_the_chainer_logits_in_onnxruntime(photo_batch, tmp_path, variant):
    ours = trained_like(variant, photo_batch)
    expected = eval_logits(ours, photo_batch)
    path = str(tmp_path / 'model.onnx')
    description = {'note': 'carried in the metadata'}
    onnx_graph.write(path, ours, description)
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = session.run(None, {'input': photo_batch})[0]
    assert got.shape == (4, 1000)
    assert numpy.abs(got - expected).max() / numpy.abs(expected).max() < 1e-4
    # One image at a time, another size: batch, height and width are symbolic.
    small = photo_batch[:1, :, :160, :192]
    numpy.testing.assert_allclose(session.run(None, {'input': small})[0],
                                  eval_logits(ours, small), rtol=1e-4, atol=1e-4)
    meta = session.get_modelmeta().custom_metadata_map
    assert '"carried in the metadata"' in meta['chainer_resnet']


def torchvision_with_statistics(x):
    """torchvision's resnet50, random weights, running statistics of ``x`` (momentum 1)."""
    torch.manual_seed(0)
    tv = tv_resnet50('v1.5')
    for module in tv.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
    tv.train()
    with torch.no_grad():
        tv(torch.from_numpy(x))
    return tv.eval()


def test_torchvision_state_dict_imports_and_round_trips(photo_batch, tmp_path, capsys):
    tv = torchvision_with_statistics(photo_batch)
    with torch.no_grad():
        expected = tv(torch.from_numpy(photo_batch)).numpy()
    torch.save(tv.state_dict(), str(tmp_path / 'tv.pth'))
    classes = tmp_path / 'classes.txt'
    classes.write_text(''.join('class {}\n'.format(k) for k in range(1000)))
    assert export.main(['from-torchvision', str(tmp_path / 'tv.pth'), str(tmp_path / 'm.npz'),
                        '--classes', str(classes)]) == 0
    assert 'BN eps 1e-05' in capsys.readouterr().out
    model = model_file.load(str(tmp_path / 'm.npz'))
    assert model.description['architecture']['bn_eps'] == 1e-5
    assert model.class_name(7) == 'class 7'
    got = eval_logits(model.predictor, photo_batch)
    assert numpy.abs(got - expected).max() / numpy.abs(expected).max() < 1e-4
    # Round trip: exported again, the state dict is torchvision's, bit for bit.
    assert export.main(['torchvision', str(tmp_path / 'm.npz'), str(tmp_path / 'back.pth')]) == 0
    back = torch.load(str(tmp_path / 'back.pth'), weights_only=True)
    original = tv.state_dict()
    assert sorted(back) == sorted(original)
    for name, value in original.items():
        if not name.endswith('num_batches_tracked'):
            assert torch.equal(back[name], value), name
    # The eps the other way: into a 2e-5 model the variances move by -1e-5.
    arrays, clipped = torchvision_weights.shift_variances(
        npz.serialize(model.predictor), 1e-5, 2e-5)
    shifted = model_file.from_arrays(arrays, dict(model.description, architecture=dict(
        model.description['architecture'], bn_eps=2e-5)))
    assert clipped == 0
    moved = eval_logits(shifted, photo_batch)
    assert numpy.abs(moved - expected).max() / numpy.abs(expected).max() < 1e-4


def test_exported_trained_model_through_the_command(tmp_path, photo_batch):
    # A model file written by the trainer's code path (described), exported by the CLI.
    ours = trained_like('v1.5', photo_batch, num_classes=10)
    recipe = recipes.get('demo')
    model_file.save(str(tmp_path / 'model.npz'), ours, model_file.describe(recipe))
    for kind, out in (('torchvision', 'm.safetensors'), ('onnx', 'm.onnx')):
        assert export.main([kind, str(tmp_path / 'model.npz'), str(tmp_path / out)]) == 0
    expected = eval_logits(ours, photo_batch)
    tv = tv_resnet50('v1.5', 10)
    tv.load_state_dict({k: torch.from_numpy(v) for k, v in safetensors.numpy.load_file(
        str(tmp_path / 'm.safetensors')).items()})
    with torch.no_grad():
        by_torch = tv.eval()(torch.from_numpy(photo_batch)).numpy()
    by_onnx = onnxruntime.InferenceSession(str(tmp_path / 'm.onnx')).run(
        None, {'input': photo_batch})[0]
    for got in (by_torch, by_onnx):
        assert numpy.abs(got - expected).max() / numpy.abs(expected).max() < 1e-4
    # And back: the description written beside the export returns with it (eps 1e-5).
    assert export.main(['from-torchvision', str(tmp_path / 'm.safetensors'),
                        str(tmp_path / 'back.npz')]) == 0
    back = model_file.load(str(tmp_path / 'back.npz'))
    assert back.recipe == recipe and back.description['architecture']['bn_eps'] == 1e-5
    got = eval_logits(back.predictor, photo_batch)
    assert numpy.abs(got - expected).max() / numpy.abs(expected).max() < 1e-4


# --- evaluation geometry ----------------------------------------------------------------

@pytest.fixture(scope='module')
def photo_set():
    return photo_tools.photo_set(count=64, seed=0)


def test_val_crop_is_torchvisions_pixel_for_pixel(photo_set):
    from PIL import Image
    ours = transforms.ValTransform(224, transforms.IMAGENET_MEAN, transforms.IMAGENET_STD,
                                   normalize=False, rounding='torchvision')
    default = transforms.ValTransform(224, transforms.IMAGENET_MEAN, transforms.IMAGENET_STD,
                                      normalize=False)
    theirs = torchvision.transforms.Compose([torchvision.transforms.Resize(256),
                                             torchvision.transforms.CenterCrop(224)])
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(photo_set.train_dir)
                   for f in files)
    old_rule_differs = 0
    for path in paths:
        with Image.open(path) as image:
            image = image.convert('RGB')
            expected = numpy.asarray(theirs(image)).transpose(2, 0, 1)
            numpy.testing.assert_array_equal(ours(image), expected, err_msg=path)
            # Negative control: the default rule (round the long side, floor the offset).
            old_rule_differs += not numpy.array_equal(default(image), expected)
    assert len(paths) == 64 and old_rule_differs > 0


def test_ten_crop_is_torchvisions(sources):
    ours = ten_crop.TenCropTransform(224, transforms.IMAGENET_MEAN, transforms.IMAGENET_STD,
                                     normalize=False, rounding='torchvision')
    theirs = torchvision.transforms.Compose([torchvision.transforms.Resize(256),
                                             torchvision.transforms.TenCrop(224)])
    for name in COLOUR_PHOTOS[:2]:
        image = sources[name][0].resize((333, 257))     # odd sizes: rounding matters
        got = ours(image)
        expected = numpy.stack([numpy.asarray(c).transpose(2, 0, 1) for c in theirs(image)])
        numpy.testing.assert_array_equal(got, expected)
