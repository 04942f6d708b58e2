"""chainer_resnet.triggers: when a launch stops, evaluates, snapshots and logs."""

from chainer_resnet import reporting, triggers


def test_points_at_fractional_intervals_and_the_end():
    # 39.1 iterations per epoch: rounded multiples, and the last iteration.
    assert triggers.points(39.1, 120) == [39, 78, 117, 120]
    assert triggers.points(4, 16) == [4, 8, 12, 16]
    assert triggers.points(0.3, 3) == [1, 2, 3]          # at least one iteration apart
    assert triggers.points(50, 16) == [16]


def test_the_log_has_every_evaluation_point_and_the_last_iteration(tiny_trainer):
    # Log interval 4 over 7 iterations, an evaluation point at 3: without the
    # points the log would hold iteration 4 only, and the last iteration's
    # observations (akiba2017's final evaluation, say) would never be written.
    trainer, _ = tiny_trainer(stop=100)
    stop = triggers.ChunkStopTrigger(7)
    trainer.stop_trigger = stop
    reporting.extend_reporting(trainer, 4, ('lr',),
                               plot_trigger=triggers.PointsTrigger([3], stop),
                            progress_bar=False)
    trainer.run()
    assert [e['iteration'] for e in trainer.get_extension('LogReport').log] == [3, 4, 7]


def test_chunk_iters_from_the_stop_flags():
    assert triggers.chunk_iters(None, None, 62.5) is None
    assert triggers.chunk_iters(7, 2.0, 62.5) == 7                  # iterations win
    assert triggers.chunk_iters(None, 2.0, 62.5) == 125
    assert triggers.chunk_iters(None, 0.001, 62.5) == 1             # at least one iteration
