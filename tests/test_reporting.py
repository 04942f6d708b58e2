"""chainer_resnet.reporting: rank 0's log, printed table and plots."""

import types

import pytest

from chainer_resnet import reporting


def test_extend_reporting_logs_prints_and_plots_the_scheduled_names(tmp_path, tiny_trainer):
    trainer, _ = tiny_trainer()
    plots = reporting.extend_reporting(trainer, 2, ('lr', 'alpha_sgd'),
                                    plot_trigger=(2, 'iteration'), progress_bar=False)
    assert plots == ['loss.png', 'accuracy.png', 'lr.png']
    trainer.run()
    log = trainer.get_extension('LogReport').log
    assert [e['iteration'] for e in log] == [2, 4]
    assert log[-1]['lr'] == pytest.approx(0.1) and log[-1]['alpha_sgd'] == 0.5
    # alpha_RMSprop beside alpha_SGD: (1 - 0.5) * 3e-4 / 0.1.
    assert log[-1]['alpha_rmsprop'] == pytest.approx(1.5e-3)
    printed = trainer.get_extension('ResumablePrintReport')._entries
    assert printed[-5:] == ['lr', 'alpha_sgd', 'alpha_rmsprop', 'perf/images_per_sec',
                            'elapsed_time']
    for name in plots:
        assert (tmp_path / name).read_bytes()[:4] == b'\x89PNG', name


def test_extend_reporting_without_a_warmup_has_no_alpha_column(tmp_path, tiny_trainer):
    trainer, _ = tiny_trainer(stop=2)
    reporting.extend_reporting(trainer, 2, ('lr',), plot_trigger=(2, 'iteration'),
                            progress_bar=False)
    trainer.run()
    assert 'alpha_sgd' not in trainer.get_extension('LogReport').log[-1]
    assert 'alpha_rmsprop' not in trainer.get_extension('LogReport').log[-1]
    assert 'alpha_sgd' not in trainer.get_extension('ResumablePrintReport')._entries


def test_plots_are_drawn_at_most_every_interval_and_at_the_end(tiny_trainer, tmp_path):
    trainer, _ = tiny_trainer(stop=6)
    reporting.extend_reporting(trainer, 1, ('lr',), plot_trigger=(1, 'iteration'),
                            progress_bar=False, plot_interval_s=3600)
    drawn = []
    plots = trainer.get_extension('LogPlots')
    real = plots.draw
    plots.draw = lambda log, out: (drawn.append(len(log)), real(log, out))
    trainer.run()
    assert drawn == [6]             # within the interval from the start: only the end
    assert (tmp_path / 'lr.png').read_bytes()[:4] == b'\x89PNG'


def test_plots_are_drawn_once_the_interval_has_passed(tiny_trainer, monkeypatch):
    clock = iter(range(0, 1000, 10))          # 10 s per call of the clock
    monkeypatch.setattr(reporting, 'time', types.SimpleNamespace(perf_counter=lambda: next(clock)))
    trainer, _ = tiny_trainer(stop=6)
    reporting.extend_reporting(trainer, 1, ('lr',), plot_trigger=(1, 'iteration'),
                               progress_bar=False, plot_interval_s=25)
    drawn = []
    plots = trainer.get_extension('LogPlots')
    plots.draw = lambda log, out: drawn.append(len(log))
    trainer.run()
    # start at 0 s; iterations at 10, 20, 30 (drawn), 40, 50, 60 (drawn), and the end.
    assert drawn == [3, 6]


def test_the_printed_table_has_no_terminal_escapes_in_a_log_file(tiny_trainer, capsys):
    trainer, _ = tiny_trainer(stop=4)
    reporting.extend_reporting(trainer, 2, ('lr',), plot_trigger=(4, 'iteration'),
                            progress_bar=False)
    trainer.run()
    printed = capsys.readouterr().out
    assert '\x1b' not in printed
    assert [line.split()[1] for line in printed.splitlines()[1:3]] == ['2', '4']


def test_health_observations_are_logged_printed_and_plotted(tmp_path, tiny_trainer):
    from chainer_resnet import health
    trainer, _ = tiny_trainer(stop=4)
    observations = health.Observations()
    observations.put(1, {'fp16/overflow': 0.0, 'layers/update_ratio/max': 0.25,
                         'layers/update_ratio/max_at': 'fc/W'})
    plots = reporting.extend_reporting(trainer, 2, ('lr',), plot_trigger=(4, 'iteration'),
                                       progress_bar=False, observations=observations)
    assert plots[-4:] == ['fp16.png', 'layers.png', 'ranks.png', 'bn.png']
    trainer.run()
    log = trainer.get_extension('LogReport').log
    # Measured before the first entry: in it, and in no other.
    assert log[0]['layers/update_ratio/max_at'] == 'fc/W'
    assert 'layers/update_ratio/max' not in log[1]
    printed = trainer.get_extension('ResumablePrintReport')._entries
    assert {'fp16/overflow', 'layers/update_ratio/max'} <= set(printed)
    for name in plots:
        assert (tmp_path / name).read_bytes()[:4] == b'\x89PNG', name
