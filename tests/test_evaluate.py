"""python -m chainer_resnet.evaluate on a model the trainer wrote (the `smoke_run` fixture).

Oracles: the run's own log (the final evaluation, reproduced exactly), the
ten crops and the BN statistics averaged by hand. The evaluation over ranks
is an ``mpi`` test at the end (tests/run_mpi.py runs it at -n 1 and -n 2).
"""

import dataclasses
import json

import numpy
import pytest

import chainer
import chainer.functions as F

from chainer_resnet import batch_normalization, evaluate, model_file, recipes, resnet
from chainer_resnet.data import loader, shards, ten_crop


@pytest.fixture(scope='module')
def comm():
    import chainermn
    return chainermn.create_communicator('naive')


def final_evaluation(out):
    log = json.loads((out / 'log').read_text())
    return [e for e in log if 'validation/main/accuracy' in e][-1]


@pytest.mark.slow
def test_evaluate_reproduces_the_runs_final_evaluation_exactly(smoke_run, capsys):
    out, cache = smoke_run
    final = final_evaluation(out)
    for model, where in (('model.npz', []), ('snapshot_iter_16.0', ['--val', 'demo'])):
        assert evaluate.main([str(out / model), '--data-cache', cache,
                              '--json', str(out / 'eval.json')] + where) == 0
        result = json.loads((out / 'eval.json').read_text())
        # Same images, same statistics, same batches: the same numbers, bit for bit.
        assert result['images'] == final['validation/main/images'] == 40
        assert result['top1'] == final['validation/main/accuracy'], model
        assert result['top5'] == final['validation/main/top5'], model
        assert result['loss'] == final['validation/main/loss'], model
        printed = capsys.readouterr().out
        assert 'top-1 {:.2%}'.format(final['validation/main/accuracy']) in printed
    assert "the run's final evaluation: top-1" in printed or model == 'snapshot_iter_16.0'
    # Default JSON path: beside the model, named by the settings.
    assert evaluate.main([str(out / 'model.npz'), '--data-cache', cache, '--val-subset',
                          '8']) == 0
    result = json.loads((out / 'model.eval-centre-stored.json').read_text())
    assert result['images'] == 8 and result['val_subset'] == 8


def val_images(comm, model, cache, size):
    recipe = dataclasses.replace(model.recipe, val_subset=size)
    base, local = shards.open_val(comm, recipe, None, None, cache)
    return [base.get_example(int(i)) for i in local]


@pytest.mark.slow
def test_ten_crops_average_the_softmax_written_out(smoke_run, comm):
    out, cache = smoke_run
    model = model_file.load(str(out / 'model.npz'))
    result = evaluate.evaluate(model, comm, chainer.get_device('@numpy'), crops=10,
                               data_cache=cache, val_subset=8)
    recipe = model.recipe
    t = ten_crop.TenCropTransform(recipe.crop_size, recipe.mean, recipe.std)
    correct = loss = 0.0
    for image, label in val_images(comm, model, cache, 8):
        with chainer.using_config('train', False):
            p = F.softmax(model.predictor(t(image))).array.mean(axis=0)
        correct += p.argmax() == label
        loss -= numpy.log(p[label])
    assert result['images'] == 8
    assert result['top1'] == correct / 8
    numpy.testing.assert_allclose(result['loss'], loss / 8, rtol=1e-5)
    # Negative control: the centre crop alone is another number.
    centre = evaluate.evaluate(model, comm, chainer.get_device('@numpy'), data_cache=cache,
                               val_subset=8)
    assert centre['loss'] != result['loss']


def statistics(predictor):
    links = batch_normalization.bn_links(predictor)
    return [(link.mean.copy(), link.var.copy()) for link in links]


@pytest.mark.slow
def test_bn_reestimate_averages_the_batches_statistics(smoke_run, comm):
    out, cache = smoke_run
    model = model_file.load(str(out / 'model.npz'))
    stored = statistics(model.predictor)
    # By hand: the recipe's first 3 training batches of this worker, training mode.
    recipe = dataclasses.replace(model.recipe, virtual_workers_per_rank=1)
    data = shards.open_data(comm, recipe, None, None, None, cache)
    train_set, sampler, _ = shards.datasets(data, recipe)
    it = chainer.iterators.SerialIterator(train_set, recipe.batch_per_worker,
                                          order_sampler=sampler)
    normalize = loader.Normalize(recipe.mean, recipe.std)
    probe = model_file.load(str(out / 'model.npz')).predictor
    seen = []
    for _ in range(3):
        x, _ = normalize(it.next())
        with chainer.using_config('train', True):
            probe(x)
        seen.append(statistics(probe))
    expected = [(numpy.mean([s[k][0] for s in seen], axis=0, dtype=numpy.float64),
                 numpy.mean([s[k][1] for s in seen], axis=0, dtype=numpy.float64))
                for k in range(len(stored))]
    result = evaluate.evaluate(model, comm, chainer.get_device('@numpy'), bn='reestimate',
                               bn_batches=3, data_cache=cache)
    got = statistics(model.predictor)
    for (mean, var), (m, v) in zip(got, expected):
        numpy.testing.assert_allclose(mean, m, rtol=1e-6, atol=1e-7)
        numpy.testing.assert_allclose(var, v, rtol=1e-6, atol=1e-7)
    # Negative controls: the stored statistics and one batch's are other values.
    assert any(not numpy.allclose(a[1], b[1]) for a, b in zip(stored, got))
    assert any(not numpy.allclose(a[1], b[1]) for a, b in zip(seen[0], got))
    assert result['bn'] == 'reestimate' and result['images'] == 40


@pytest.mark.slow
def test_a_model_written_before_descriptions_needs_its_recipe(smoke_run, tmp_path, capsys):
    out, cache = smoke_run
    arrays = dict(numpy.load(str(out / 'model.npz')))
    del arrays[model_file.META_KEY]
    numpy.savez(str(tmp_path / 'model.npz'), **arrays)
    assert evaluate.main([str(tmp_path / 'model.npz'), '--data-cache', cache]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and '--recipe-json' in err and 'Traceback' not in err
    assert evaluate.main([str(tmp_path / 'model.npz'), '--val', 'demo', '--data-cache', cache,
                          '--recipe-json', str(out / 'recipe.json'),
                          '--json', str(tmp_path / 'r.json')]) == 0
    result = json.loads((tmp_path / 'r.json').read_text())
    assert result['top1'] == final_evaluation(out)['validation/main/accuracy']


def test_user_errors_are_one_line(tmp_path, capsys):
    assert evaluate.main([str(tmp_path / 'missing.npz')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: model file') and err.count('\n') == 1
    with pytest.raises(SystemExit):
        evaluate.main([str(tmp_path / 'm.npz'), '--crops', '5'])


def test_moving_average_models_cannot_reestimate(comm):
    predictor = resnet.from_recipe(dataclasses.replace(recipes.SMOKE,
                                                       batch_norm='moving_average'))
    with pytest.raises(model_file.ModelFileError, match='--bn stored'):
        evaluate.bn_reestimate(predictor, comm, None, None, None, 2, 'mean')


# --- over ranks ---------------------------------------------------------------------------

@pytest.mark.mpi
def test_each_image_once_and_bn_statistics_averaged_over_ranks(comm):
    """n ranks give the 1-rank numbers; each rank's BN estimate enters the average."""
    import chainermn
    recipe = dataclasses.replace(recipes.SMOKE, val_subset=24)
    description = model_file.describe(recipe, data=model_file.data_paths(None, None, None,
                                                                          None))

    def fresh():
        numpy.random.seed(1)
        return model_file.Model(resnet.from_recipe(recipe), description, 'in-memory')
    device = chainer.get_device('@numpy')
    alone = chainermn.create_communicator('naive', mpi_comm=comm.mpi_comm.Split(comm.rank, 0))
    # Batches of 4: the ranks' blocks of 24 / n images cut into the same batches as one
    # process's, so the sums are the same numbers.
    everyone = evaluate.evaluate(fresh(), comm, device, val_subset=24, batch=4)
    reference = evaluate.evaluate(fresh(), alone, device, val_subset=24, batch=4)
    model = fresh()
    evaluate.evaluate(model, comm, device, bn='reestimate', bn_batches=2, val_subset=8)
    # This rank's estimate alone: its own training shard, averaged over its 2 batches only.
    local = fresh()
    data = shards.open_data(comm, recipe)
    train_set, sampler, _ = shards.datasets(data, recipe)
    it = chainer.iterators.SerialIterator(train_set, recipe.batch_per_worker,
                                          order_sampler=sampler)
    evaluate.bn_reestimate(local.predictor, alone, device, it, loader.BadSampleGuard(
        0, converter=loader.Normalize(recipe.mean, recipe.std)), 2, 'mean')
    estimates = comm.mpi_comm.allgather(statistics(local.predictor))
    averaged = statistics(model.predictor)
    assert everyone['images'] == reference['images'] == 24
    assert everyone['top1'] == reference['top1'] and everyone['top5'] == reference['top5']
    numpy.testing.assert_allclose(everyone['loss'], reference['loss'], rtol=1e-12)
    for k in (0, len(averaged) - 1):
        for j in (0, 1):
            numpy.testing.assert_allclose(
                averaged[k][j], numpy.mean([e[k][j] for e in estimates], axis=0),
                rtol=1e-6, atol=1e-7)
    if comm.size > 1:       # negative control: the ranks' own estimates differ
        assert not numpy.allclose(estimates[0][0][1], estimates[1][0][1])
