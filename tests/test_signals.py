"""chainer_resnet.signals: a wall-time warning stops the launch with a snapshot.

Across real ranks: tests/test_launch.py and tests/test_slurm.py.
"""

from chainer_resnet import signals, triggers


class _OneRank:
    """The communicator surface StopOnSignal uses, for one process."""

    class mpi_comm:
        @staticmethod
        def allreduce(value, op=None):
            return value


def test_a_signal_stops_the_launch_at_the_next_iteration_with_a_snapshot(tiny_trainer):
    import os
    import signal
    trainer, _ = tiny_trainer(stop=100)
    stop = triggers.ChunkStopTrigger(8)
    trainer.stop_trigger = stop
    ext = signals.StopOnSignal(_OneRank(), stop)
    trainer.extend(ext)
    snapshots_at = []
    trainer.extend(lambda t: snapshots_at.append(t.updater.iteration),
                   trigger=triggers.PointsTrigger([8], stop), name='fake_snapshot')

    def send_at_2(t):
        if t.updater.iteration == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
    trainer.extend(send_at_2, name='sender', priority=-1000)
    before = signal.getsignal(signal.SIGUSR1)
    trainer.run()
    assert trainer.updater.iteration == 3 and ext.stopped_by == 'SIGUSR1'
    assert snapshots_at == [3]                        # the chunk end moved: a snapshot there
    assert signal.getsignal(signal.SIGUSR1) is before  # the handler is restored
    # Negative control: without the signal the launch runs to its end.
    trainer, _ = tiny_trainer(stop=100)
    stop = triggers.ChunkStopTrigger(8)
    trainer.stop_trigger = stop
    trainer.extend(signals.StopOnSignal(_OneRank(), stop))
    trainer.run()
    assert trainer.updater.iteration == 8
