"""chainer_resnet.model_file: a model.npz that describes itself, and the one loader."""

import dataclasses
import json
import zipfile

import numpy
import pytest

import chainer
from chainer.serializers import npz

from chainer_resnet import model_file, recipes, resnet
from chainer_resnet.batch_normalization import LastBatchNormalization


@pytest.fixture(scope='module')
def small():
    """A 10-class ResNet-50 with non-default BN statistics, and its description."""
    numpy.random.seed(0)
    predictor = resnet.from_recipe(recipes.DEMO)
    rng = numpy.random.RandomState(1)
    for link in predictor.links():
        if isinstance(link, LastBatchNormalization):
            link.set_statistics(rng.randn(link.size).astype(numpy.float32),
                                rng.uniform(0.5, 2, link.size).astype(numpy.float32))
    description = model_file.describe(recipes.DEMO, classes=[str(k) for k in range(10)],
                                      data=model_file.data_paths(None, None, None, None))
    return predictor, description


def test_described_model_round_trips(small, tmp_path):
    predictor, description = small
    path = str(tmp_path / 'model.npz')
    model_file.save(path, predictor, description)
    model = model_file.load(path)
    assert model.description == json.loads(json.dumps(description))
    assert model.recipe == recipes.DEMO
    assert model.class_name(3) == '3'
    theirs, ours = npz.serialize(predictor), npz.serialize(model.predictor)
    assert sorted(theirs) == sorted(ours)
    for name in theirs:
        numpy.testing.assert_array_equal(theirs[name], ours[name], err_msg=name)
    arch = model.description['architecture']
    assert arch == {'model': 'resnet50', 'variant': 'v1.5', 'num_classes': 10,
                    'batch_norm': 'last_batch', 'bn_eps': 2e-5}
    pre = model.description['preprocessing']
    assert (pre['crop_size'], pre['resize_size'], pre['resize']) == (24, 27, 'shorter_side')
    # Chainer's own loader still reads the file: it ignores the description entry.
    plain = resnet.from_recipe(recipes.DEMO)
    chainer.serializers.load_npz(path, plain)
    numpy.testing.assert_array_equal(plain.bn1.var, predictor.bn1.var)


def test_build_follows_the_architecture():
    arch = dict(model_file.architecture(recipes.AKIBA2017), variant='v1', num_classes=7,
                bn_eps=1e-5, batch_norm='moving_average')
    predictor = model_file.build(arch)
    assert predictor.fc.W.shape == (7, 2048) and predictor.variant == 'v1'
    assert isinstance(predictor.bn1, chainer.links.BatchNormalization)
    assert predictor.bn1.eps == 1e-5
    assert model_file.build(model_file.architecture(recipes.DEMO)).bn1.eps == 2e-5


def test_a_file_without_description_needs_the_recipe(small, tmp_path):
    predictor, _ = small
    path = str(tmp_path / 'model.npz')
    chainer.serializers.save_npz(path, predictor)       # as model.npz was written before
    with pytest.raises(model_file.ModelFileError) as e:
        model_file.load(path)
    assert '--recipe-json' in str(e.value) and "the run folder's recipe.json" in str(e.value)
    (tmp_path / 'recipe.json').write_text(recipes.DEMO.to_json())
    with pytest.raises(model_file.ModelFileError, match='recipe.json is beside it'):
        model_file.load(path)
    model = model_file.load(path, model_file.read_recipe_json(str(tmp_path / 'recipe.json')))
    numpy.testing.assert_array_equal(model.predictor.fc.W.array, predictor.fc.W.array)
    assert model.classes is None and model.class_name(4) == '4'


def test_what_is_not_a_model_is_said(small, tmp_path):
    with pytest.raises(model_file.ModelFileError, match='does not exist'):
        model_file.read(str(tmp_path / 'missing.npz'))
    (tmp_path / 'text.npz').write_text('not a zip')
    with pytest.raises(model_file.ModelFileError, match='cannot read'):
        model_file.read(str(tmp_path / 'text.npz'))
    numpy.savez(str(tmp_path / 'other.npz'), x=numpy.zeros(3))
    with pytest.raises(model_file.ModelFileError, match='no conv1/W'):
        model_file.read(str(tmp_path / 'other.npz'))
    predictor, description = small
    newer = dict(description, format=model_file.FORMAT + 1)
    model_file.save(str(tmp_path / 'newer.npz'), predictor, newer)
    with pytest.raises(model_file.ModelFileError, match='newer chainer_resnet'):
        model_file.read(str(tmp_path / 'newer.npz'))
    # Arrays of another architecture: named, not a traceback.
    arrays = npz.serialize(predictor)
    wrong = dict(description, architecture=dict(description['architecture'], num_classes=5))
    with pytest.raises(model_file.ModelFileError, match='does not fit'):
        model_file.from_arrays(arrays, wrong)
    with pytest.raises(model_file.ModelFileError, match='lacks 1 array'):
        model_file.from_arrays({k: v for k, v in arrays.items() if k != 'fc/b'}, description)
    with zipfile.ZipFile(str(tmp_path / 'newer.npz')) as z:
        assert model_file.META_KEY + '.npy' in z.namelist()


def test_recipe_from_an_older_or_newer_dict():
    values = json.loads(recipes.SMOKE.to_json())
    values['a_field_from_the_future'] = 1
    del values['init_model']
    assert model_file.recipe_from_dict(values) == recipes.SMOKE
    pre = model_file.preprocessing(dataclasses.replace(recipes.DEMO, augmentation='pre_resized',
                                                       pre_resize_size=28))
    assert pre['resize'] == 'square' and pre['resize_size'] == 28


@pytest.mark.slow
def test_a_snapshot_is_a_model_with_the_runs_recipe(smoke_run):
    out, _ = smoke_run
    snapshot = model_file.load(str(out / 'snapshot_iter_16.0'))
    final = model_file.load(str(out / 'model.npz'))
    assert snapshot.recipe == final.recipe == recipes.SMOKE
    assert snapshot.description['iteration'] == final.description['iteration'] == 16
    assert final.description['validation']['iteration'] == 16
    assert final.classes == [str(k) for k in range(10)]
    a, b = npz.serialize(snapshot.predictor), npz.serialize(final.predictor)
    for name in a:      # the snapshot was taken after the same BN statistics average
        numpy.testing.assert_array_equal(a[name], b[name], err_msg=name)
