"""Single-process parts of chainer_resnet.extensions: triggers and rank 0's reporting.

The collective extensions (BN statistics allreduce, exact evaluator) are
tested across ranks in tests/test_distributed.py.
"""

import numpy
import pytest

import chainer
import chainer.links as L
from chainer import training

from chainer_resnet import extensions as cr_ext
from chainer_resnet.optimizers import RMSpropWarmup


def test_points_at_fractional_intervals_and_the_end():
    # 39.1 iterations per epoch: rounded multiples, and the last iteration.
    assert cr_ext.points(39.1, 120) == [39, 78, 117, 120]
    assert cr_ext.points(4, 16) == [4, 8, 12, 16]
    assert cr_ext.points(0.3, 3) == [1, 2, 3]          # at least one iteration apart
    assert cr_ext.points(50, 16) == [16]


def _tiny_trainer(tmp_path, iterations=4):
    model = L.Classifier(L.Linear(3, 2))
    x = numpy.random.RandomState(0).randn(8, 3).astype(numpy.float32)
    t = numpy.array([0, 1] * 4, dtype=numpy.int32)
    it = chainer.iterators.SerialIterator(chainer.datasets.TupleDataset(x, t), 4)
    opt = RMSpropWarmup(lr=0.1, alpha_sgd=0.5)
    opt.setup(model)
    updater = training.updaters.StandardUpdater(it, opt)
    return training.Trainer(updater, (iterations, 'iteration'), out=str(tmp_path))


def test_extend_reporting_logs_prints_and_plots_the_scheduled_names(tmp_path):
    trainer = _tiny_trainer(tmp_path)
    plots = cr_ext.extend_reporting(trainer, 2, ('lr', 'alpha_sgd'), progress_bar=False)
    assert plots == ['loss.png', 'accuracy.png', 'lr.png']
    trainer.run()
    log = trainer.get_extension('LogReport').log
    assert [e['iteration'] for e in log] == [2, 4]
    assert log[-1]['lr'] == pytest.approx(0.1) and log[-1]['alpha_sgd'] == 0.5
    printed = trainer.get_extension('ResumablePrintReport')._entries
    assert printed[-4:] == ['lr', 'alpha_sgd', 'perf/images_per_sec', 'elapsed_time']
    for name in plots:
        assert (tmp_path / name).read_bytes()[:4] == b'\x89PNG', name


def test_extend_reporting_without_a_warmup_has_no_alpha_column(tmp_path):
    trainer = _tiny_trainer(tmp_path, iterations=2)
    cr_ext.extend_reporting(trainer, 2, ('lr',), progress_bar=False)
    trainer.run()
    assert 'alpha_sgd' not in trainer.get_extension('LogReport').log[-1]
    assert 'alpha_sgd' not in trainer.get_extension('ResumablePrintReport')._entries
