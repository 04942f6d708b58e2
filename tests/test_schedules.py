"""Tests of chainer_resnet.schedules.

Expected values are literals computed by hand (docs/method.md §1, §2) at every
boundary and one iteration either side of it, mostly at 39 iterations per
epoch (the paper's ~39.1).
"""

import functools
import types

import numpy as np
import pytest

import chainer
import chainer.links as L
from chainer import training
from chainer.training import extensions

from chainer_resnet.optimizers import RMSpropWarmup
from chainer_resnet.schedules import (
    HyperparameterSchedule, alpha_sgd, goyal_lr, progress_epochs, slow_start_lr)

IPE = 39  # iterations per epoch
IMAGENET_IPE = 1281167 / 32768  # 39.0981...

# --------------------------------------------------------------------------
# alpha_sgd (§1), centre 10, period 5

# (iteration at 39 it/epoch, alpha with k = 1, alpha with k = 2)
ALPHA_TABLE = [
    (0, 0.00915781944, 0.00915781944),  # 0.5 e^-4, docs/method.md reference
    (1, 0.00925222912, 0.00925222912),  # 0.5 e^(-4 + 2/195)
    (194, 0.0669771615, 0.0669771615),
    (195, 0.0676676416, 0.0676676416),  # e = 5: 0.5 e^-2, reference
    (196, 0.0683652400, 0.0683652400),
    (389, 0.494898004, 0.494898004),    # 0.5 e^(-2/195)
    (390, 0.5, 0.5),                    # e = 10, the centre
    (391, 0.505128205, 0.510256410),    # 0.5 + k (1/39) / 5
    (429, 0.7, 0.9),                    # e = 11, reference (k = 1)
    (468, 0.9, 1.3),                    # e = 12, reference (k = 1)
    (487, 0.997435897, 1.494871795),    # e = 12.487: k = 2 peaks here
    (488, 1.0, 1.0),                    # e = 12.513
    (3510, 1.0, 1.0),                   # e = 90
]


@pytest.mark.parametrize('iteration, k1, k2', ALPHA_TABLE)
def test_alpha_sgd_table(iteration, k1, k2):
    e = iteration / IPE
    assert alpha_sgd(e) == pytest.approx(k1, rel=1e-8)
    assert alpha_sgd(e, k=1) == pytest.approx(k1, rel=1e-8)
    assert alpha_sgd(e, k=2) == pytest.approx(k2, rel=1e-8)
    assert alpha_sgd(e, center=10, period=5, k=2) == pytest.approx(k2, rel=1e-8)
    assert isinstance(alpha_sgd(e), float)


@pytest.mark.parametrize('e, k1, k2', [
    (12.25, 0.95, 1.4),   # one iteration before 12.5 at 4 it/epoch
    (12.5, 1.0, 1.0),     # left-closed: exactly at 12.5 it is 1
    (12.75, 1.0, 1.0),
])
def test_alpha_sgd_at_the_end_of_the_warmup(e, k1, k2):
    assert alpha_sgd(e) == pytest.approx(k1, rel=1e-12)
    assert alpha_sgd(e, k=2) == pytest.approx(k2, rel=1e-12)


def test_alpha_sgd_k2_overshoots_and_is_not_clipped():
    values = [alpha_sgd(t / IPE, k=2) for t in range(600)]
    peak = int(np.argmax(values))
    assert peak == 487
    assert 1.49 < values[peak] < 1.5
    assert values[488] == 1.0
    # k = 1 never exceeds 1 and is non-decreasing.
    k1 = [alpha_sgd(t / IPE) for t in range(600)]
    assert max(k1) == 1.0
    assert all(b >= a for a, b in zip(k1, k1[1:]))


def test_alpha_sgd_other_centre_and_period():
    # centre 2, period 2: 0.5 e^-2 at 0; 0.5 + 0.5/2 = 0.75 at 2.5; 1 from 3.
    assert alpha_sgd(0.0, center=2, period=2) == pytest.approx(0.0676676416)
    assert alpha_sgd(2.5, center=2, period=2) == pytest.approx(0.75)
    assert alpha_sgd(3.0, center=2, period=2) == 1.0


def test_alpha_sgd_accepts_arrays():
    e = np.array([[0.0, 10.0], [11.0, 1e6]])
    np.testing.assert_allclose(alpha_sgd(e),
                               [[0.00915781944, 0.5], [0.7, 1.0]], rtol=1e-9)
    with pytest.raises(ValueError, match='period'):
        alpha_sgd(1.0, period=0)


# --------------------------------------------------------------------------
# slow_start_lr (§2), eta_base = 12.8

# (iteration at 39 it/epoch, lr for 90 epochs)
SLOW_START_90 = [
    (0, 6.4),
    (1559, 6.4), (1560, 0.96), (1561, 0.96),       # e = 40
    (2729, 0.96), (2730, 0.128), (2731, 0.128),    # e = 70
    (3314, 0.128), (3315, 0.0128), (3316, 0.0128),  # e = 85
    (3509, 0.0128), (3510, 0.0128),                # e = 90
]
# 18 epochs: the ends scale to 8, 14 and 17 epochs.
SLOW_START_18 = [
    (0, 6.4),
    (311, 6.4), (312, 0.96), (313, 0.96),          # e = 8
    (545, 0.96), (546, 0.128), (547, 0.128),       # e = 14
    (662, 0.128), (663, 0.0128), (664, 0.0128),    # e = 17
]


@pytest.mark.parametrize('iteration, lr', SLOW_START_90)
def test_slow_start_lr_90_epochs(iteration, lr):
    assert slow_start_lr(iteration / IPE, base_lr=12.8) == pytest.approx(
        lr, rel=1e-12)
    assert slow_start_lr(iteration / IPE, 12.8, total_epochs=90) == \
        pytest.approx(lr, rel=1e-12)


@pytest.mark.parametrize('iteration, lr', SLOW_START_18)
def test_slow_start_lr_scaled_to_18_epochs(iteration, lr):
    assert slow_start_lr(iteration / IPE, base_lr=12.8, total_epochs=18) == \
        pytest.approx(lr, rel=1e-12)


def test_slow_start_lr_at_imagenet_iterations_per_epoch():
    # 40 epochs = 1563.92 iterations of 32,768 images.
    assert slow_start_lr(1563 / IMAGENET_IPE, 12.8) == pytest.approx(6.4)
    assert slow_start_lr(1564 / IMAGENET_IPE, 12.8) == pytest.approx(0.96)


def test_slow_start_lr_accepts_arrays():
    np.testing.assert_allclose(
        slow_start_lr(np.array([39.9, 40.0, 70.0, 85.0]), 12.8),
        [6.4, 0.96, 0.128, 0.0128], rtol=1e-12)


# --------------------------------------------------------------------------
# goyal_lr, progress_epochs


@pytest.mark.parametrize('e, lr', [
    (0.0, 0.1),                   # warm-up starts at 0.1
    (2.5, 6.45),                  # 0.1 + 12.7 / 2
    (194 / IPE, 12.734871795),    # 0.1 + 12.7 * (194/39) / 5
    (5.0, 12.8),                  # warm-up ends at eta_base
    (29.99, 12.8), (30.0, 1.28),
    (59.99, 1.28), (60.0, 0.128),
    (79.99, 0.128), (80.0, 0.0128), (89.99, 0.0128),
])
def test_goyal_lr(e, lr):
    assert goyal_lr(e, base_lr=12.8) == pytest.approx(lr, rel=1e-9)


def test_goyal_lr_options():
    assert goyal_lr(0.0, 3.2, warmup_epochs=0) == pytest.approx(3.2)
    assert goyal_lr(1.0, 3.2, warmup_epochs=2, start_lr=0.2) == pytest.approx(1.7)
    assert goyal_lr(10.0, 3.2, milestones=(5, 8), gamma=0.5) == pytest.approx(0.8)
    assert goyal_lr(10.0, 3.2, milestones=()) == pytest.approx(3.2)


def test_progress_epochs():
    assert progress_epochs(390, 39) == 10.0
    assert progress_epochs(391, 39) == pytest.approx(10.0256410256)
    assert progress_epochs(391, 39, whole_epochs=True) == 10.0
    assert progress_epochs(389, 39, whole_epochs=True) == 9.0
    assert progress_epochs(40, IMAGENET_IPE) == pytest.approx(1.02306725)
    assert progress_epochs(40, IMAGENET_IPE, whole_epochs=True) == 1.0
    # Whole epochs: alpha stays at alpha(9) = 0.5 e^-0.4 until iteration 390.
    assert alpha_sgd(progress_epochs(389, 39, whole_epochs=True)) == \
        pytest.approx(0.335160023)
    with pytest.raises(ValueError, match='iters_per_epoch'):
        progress_epochs(1, 0)


# --------------------------------------------------------------------------
# HyperparameterSchedule with a real Trainer

TOY_IPE = 3  # 12 samples, batch 4, no shuffling
TOY_LR = functools.partial(slow_start_lr, base_lr=1.0, total_epochs=9)
TOY_ALPHA = functools.partial(alpha_sgd, center=2, period=2)
TOTAL_ITERS = 27  # 9 epochs: lr changes at iterations 12, 21, 25.5


class Recorder(object):
    """Optimizer hook: the hyperparameters the update rule sees, per update."""
    name = 'recorder'
    call_for_each_param = False
    timing = 'pre'

    def __init__(self):
        self.records = []

    def __call__(self, opt):
        rule = opt.target.predictor.W.update_rule
        # opt.t is incremented after the 'pre' hooks: it is the number of
        # updates done so far, i.e. updater.iteration before this update.
        self.records.append((opt.t, rule.hyperparam.lr,
                             rule.hyperparam.alpha_sgd))


def make_trainer(out, stop, lr=123.0, alpha=0.77):
    rng = np.random.RandomState(0)
    data = chainer.datasets.TupleDataset(
        rng.standard_normal((12, 3)).astype(np.float32),
        rng.randint(0, 2, size=12).astype(np.int32))
    np.random.seed(1)
    model = L.Classifier(L.Linear(3, 2))
    # Deliberately wrong initial values: initialize() must overwrite them.
    opt = RMSpropWarmup(lr=lr, alpha_sgd=alpha).setup(model)
    recorder = Recorder()
    opt.add_hook(recorder)
    it = chainer.iterators.SerialIterator(data, 4, shuffle=False)
    updater = training.updaters.StandardUpdater(it, opt)
    trainer = training.Trainer(updater, (stop, 'iteration'), out=str(out))
    trainer.extend(HyperparameterSchedule('lr', TOY_LR, TOY_IPE))
    trainer.extend(HyperparameterSchedule('alpha_sgd', TOY_ALPHA, TOY_IPE))
    return trainer, recorder, model


def test_schedule_sets_value_for_progress_before_each_update(tmp_path):
    trainer, recorder, _ = make_trainer(tmp_path, TOTAL_ITERS)
    trainer.run()
    assert [r[0] for r in recorder.records] == list(range(TOTAL_ITERS))
    for t, lr, alpha in recorder.records:
        assert lr == TOY_LR(t / TOY_IPE)
        assert alpha == TOY_ALPHA(t / TOY_IPE)
    # Hand-computed: the first update (initialize()) and each lr boundary.
    lrs = [lr for _, lr, _ in recorder.records]
    assert recorder.records[0][1:] == (0.5, pytest.approx(0.0676676416))
    assert lrs[11] == 0.5 and lrs[12] == 0.075      # e = 4 at iteration 12
    assert lrs[20] == 0.075 and lrs[21] == 0.01     # e = 7 at iteration 21
    assert lrs[25] == 0.01 and lrs[26] == 0.001     # e = 8.5 at 25.5
    assert [r[2] for r in recorder.records][9:] == [1.0] * 18  # e >= 3


def test_schedule_names_do_not_clash(tmp_path):
    trainer, _, _ = make_trainer(tmp_path, 1)
    trainer.get_extension('schedule_lr')
    trainer.get_extension('schedule_alpha_sgd')


def test_resumed_trainer_continues_with_the_right_values(tmp_path):
    k = 10
    full, full_rec, full_model = make_trainer(tmp_path / 'full', TOTAL_ITERS)
    full.run()

    first, first_rec, _ = make_trainer(tmp_path / 'resume', k)
    first.extend(extensions.snapshot(filename='snapshot'),
                 trigger=(k, 'iteration'))
    first.run()
    # A fresh trainer with other initial values, resumed from the snapshot.
    second, second_rec, second_model = make_trainer(
        tmp_path / 'resume', TOTAL_ITERS, lr=999.0, alpha=0.123)
    chainer.serializers.load_npz(str(tmp_path / 'resume' / 'snapshot'), second)
    assert second.updater.iteration == k
    second.run()

    assert second_rec.records[0] == (k, TOY_LR(k / TOY_IPE),
                                     TOY_ALPHA(k / TOY_IPE))
    assert first_rec.records + second_rec.records == full_rec.records
    for name in ('W', 'b'):
        np.testing.assert_array_equal(
            getattr(second_model.predictor, name).array,
            getattr(full_model.predictor, name).array)


def test_schedule_whole_epochs_and_optimizer_name():
    opt = RMSpropWarmup(lr=1.0, alpha_sgd=0.5)
    updater = types.SimpleNamespace(
        iteration=5, get_optimizer={'other': opt}.__getitem__)
    trainer = types.SimpleNamespace(updater=updater)
    ext = HyperparameterSchedule('alpha_sgd', TOY_ALPHA, 3, whole_epochs=True,
                                 optimizer_name='other')
    ext(trainer)  # e = floor(5/3) = 1: 0.5 e^-1
    assert opt.alpha_sgd == pytest.approx(0.183939721)
    ext.whole_epochs = False
    ext(trainer)  # e = 5/3: 0.5 e^(-1/3)
    assert opt.alpha_sgd == pytest.approx(0.358265655)
    with pytest.raises(ValueError, match='iters_per_epoch'):
        HyperparameterSchedule('lr', TOY_LR, 0)


def test_schedule_through_multi_node_optimizer():
    pytest.importorskip('mpi4py')
    import chainermn
    comm = chainermn.create_communicator('naive')
    opt = RMSpropWarmup(lr=1.0, alpha_sgd=0.5)
    mn_opt = chainermn.create_multi_node_optimizer(opt, comm)
    updater = types.SimpleNamespace(iteration=39 * 40,
                                    get_optimizer=lambda name: mn_opt)
    HyperparameterSchedule(
        'lr', functools.partial(slow_start_lr, base_lr=12.8), 39)(
        types.SimpleNamespace(updater=updater))
    assert opt.lr == pytest.approx(0.96)


# --------------------------------------------------------------------------
# from_recipe: the recipe's named schedules (moved here with Recipe.peak_lr)

def test_from_recipe_paper_peak_and_names():
    from chainer_resnet import recipes, schedules
    s = schedules.from_recipe(recipes.AKIBA2017, 1024)
    assert s.names == ('lr', 'alpha_sgd')
    assert s.peak('lr') == pytest.approx(6.4)             # 0.5 * 12.8
    assert s.total_iters == 3519
    assert s.iters_per_epoch == pytest.approx(IMAGENET_IPE)
    first = s.initial_values()
    assert first['lr'] == pytest.approx(6.4)
    assert first['alpha_sgd'] == pytest.approx(0.00915781944)
    # The values are the pure functions' at the same progress.
    assert s.value_at('lr', 1564) == pytest.approx(0.96)           # e = 40.002
    assert s.value_at('lr', 1563) == pytest.approx(6.4)            # e = 39.977
    assert s.value_at('alpha_sgd', 429) == pytest.approx(alpha_sgd(429 / IMAGENET_IPE))


def test_from_recipe_goyal_and_scaled_paper_peaks():
    from chainer_resnet import recipes, schedules
    goyal = schedules.from_recipe(recipes.GOYAL2017, 256)
    assert goyal.names == ('lr',)                          # momentum SGD: no warm-up
    assert goyal.peak('lr') == pytest.approx(3.2)          # 0.1 * 8192 / 256
    assert goyal.initial_values() == {'lr': pytest.approx(0.1)}
    relaxed = recipes.resolve('akiba2017', ['world_size_check=false'])
    assert schedules.from_recipe(relaxed, 8).peak('lr') == pytest.approx(0.5 * 0.1 * 256 / 256)


def test_from_recipe_extensions_set_what_the_functions_say():
    from chainer_resnet import recipes, schedules
    s = schedules.from_recipe(recipes.SMOKE, 1)
    names = [name for name, _ in s.extensions()]
    assert names == ['lr_schedule', 'alpha_sgd_schedule']
    opt = RMSpropWarmup(lr=1.0, alpha_sgd=0.5)
    updater = types.SimpleNamespace(iteration=3, get_optimizer=lambda name: opt)
    for _, ext in s.extensions():
        ext(types.SimpleNamespace(updater=updater))
    assert opt.lr == pytest.approx(s.value_at('lr', 3))
    assert opt.alpha_sgd == pytest.approx(s.value_at('alpha_sgd', 3))
    whole = schedules.from_recipe(recipes.resolve('smoke', ['whole_epoch_progress=true']), 1)
    assert whole.value_at('alpha_sgd', 7) == pytest.approx(whole.value_at('alpha_sgd', 0))
