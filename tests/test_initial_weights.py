"""--init-model: fine-tuning from a model file (chainer_resnet.initial_weights)."""

import dataclasses
import json
import os
import sys

import numpy
import pytest

from chainer.serializers import npz

from chainer_resnet import initial_weights, model_file, recipes, resnet, torchvision_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train_imagenet  # noqa: E402


@pytest.fixture(scope='module')
def comm():
    import chainermn
    return chainermn.create_communicator('naive')


def five_class_lists(cache, folder):
    """The demo's list files cut to digits 0-4 (a 5-class task)."""
    from chainer_resnet.data import demo
    data = demo.demo_dataset(cache_dir=cache)
    paths = {}
    for name, source in (('train', data.train_list), ('val', data.val_list)):
        lines = [line for line in open(source).read().splitlines()
                 if line.strip() and int(line.split()[-1]) < 5]
        paths[name] = str(folder / (name + '5.txt'))
        with open(paths[name], 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return paths['train'], paths['val'], data.root


@pytest.mark.slow
def test_weights_are_copied_and_the_classifier_replaced(smoke_run, comm):
    out, _ = smoke_run
    path = str(out / 'model.npz')
    source = npz.serialize(model_file.load(path).predictor)
    for classes in (10, 5):
        recipe = dataclasses.replace(recipes.SMOKE, num_classes=classes)
        numpy.random.seed(recipe.seed)
        predictor = resnet.from_recipe(recipe)
        fresh = npz.serialize(predictor)
        line = initial_weights.load_into(predictor, path, recipe, comm)
        got = npz.serialize(predictor)
        for name in got:
            if name.startswith('fc/') and classes != 10:
                numpy.testing.assert_array_equal(got[name], fresh[name], err_msg=name)
            else:
                numpy.testing.assert_array_equal(got[name], source[name], err_msg=name)
        assert ('classifier replaced (10 -> 5 classes' in line) == (classes == 5)
    v1 = dataclasses.replace(recipes.SMOKE, resnet_variant='v1')
    with pytest.raises(model_file.ModelFileError, match='resnet_variant=v1.5'):
        initial_weights.load_into(resnet.from_recipe(v1), path, v1, comm)


def test_torchvision_weights_move_to_the_models_eps(comm, tmp_path):
    numpy.random.seed(0)
    donor = resnet.from_recipe(recipes.SMOKE)
    arch = dict(model_file.architecture(recipes.SMOKE), bn_eps=1e-5)
    state = torchvision_weights.to_torchvision(npz.serialize(donor), arch)   # unshifted
    state['bn1.running_var'][:2] = [4e-6, 3.0]
    torchvision_weights.write(str(tmp_path / 'tv.safetensors'), state)
    predictor = resnet.from_recipe(recipes.SMOKE)
    line = initial_weights.load_into(predictor, str(tmp_path / 'tv.safetensors'),
                                     recipes.SMOKE, comm)
    assert 'from eps 1e-05 to 2e-05 (1 clipped at 0)' in line
    numpy.testing.assert_allclose(predictor.bn1.var[:2], [0.0, 3.0 - 1e-5], rtol=1e-7)


@pytest.mark.slow
def test_fine_tuning_to_five_classes_trains_and_resumes_exactly(smoke_run, tmp_path, capsys):
    out, cache = smoke_run
    train, val, root = five_class_lists(cache, tmp_path)

    def run(folder, *extra):
        return train_imagenet.run([
            '--recipe', 'smoke', '--out', str(tmp_path / folder), '--loaderjobs', '0',
            '--no-progress', '--train', train, '--val', val, '--root', root,
            '--init-model', str(out / 'model.npz'), '--set', 'num_classes=5',
            '--set', 'epochs=1'] + list(extra))
    run('a')
    printed = capsys.readouterr().out
    assert 'classifier replaced (10 -> 5 classes, initialised)' in printed
    recorded = json.loads((tmp_path / 'a' / 'recipe.json').read_text())
    assert recorded['init_model'] == str(out / 'model.npz') and recorded['num_classes'] == 5
    final = [e for e in json.loads((tmp_path / 'a' / 'log').read_text())
             if 'validation/main/accuracy' in e][-1]
    assert final['validation/main/images'] == 40 and numpy.isfinite(final['main/loss'])
    tuned = model_file.load(str(tmp_path / 'a' / 'model.npz'))
    assert tuned.description['architecture']['num_classes'] == 5
    assert tuned.recipe.init_model == str(out / 'model.npz')
    # Stop after 3 iterations and resume: the same model as the uninterrupted run.
    run('b', '--stop-after-iters', '3')
    run('b')
    a = numpy.load(str(tmp_path / 'a' / 'model.npz'))
    b = numpy.load(str(tmp_path / 'b' / 'model.npz'))
    for key in a.files:
        if key != model_file.META_KEY:
            numpy.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # Negative control: the same run from scratch ends elsewhere.
    train_imagenet.run(['--recipe', 'smoke', '--out', str(tmp_path / 'c'), '--loaderjobs', '0',
                        '--no-progress', '--train', train, '--val', val, '--root', root,
                        '--set', 'num_classes=5', '--set', 'epochs=1'])
    c = numpy.load(str(tmp_path / 'c' / 'model.npz'))
    assert not numpy.array_equal(a['res3/0/conv2/W'], c['res3/0/conv2/W'])
