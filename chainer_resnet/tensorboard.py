"""TensorBoard event files beside the JSON log: one run per output folder.

:class:`TensorBoardLog` (rank 0) writes every numeric value of every log
entry, and the health signals' complete values (every layer, every BN link:
:class:`chainer_resnet.health.Observations`), as scalars at their iteration,
into ``events.out.tfevents.*`` files in the output folder itself, so that
``tensorboard --logdir results`` shows one run per ``--out``.

The writer is tensorboardX's ``FileWriter`` (a maintained library of 90 kB
over protobuf; benchmarks/README.md, "Health signals", compares it with
TensorBoard's own writer). It is an optional dependency (``pip install
'chainer_resnet[tensorboard]'``), imported lazily: without it the run goes on
without event files and says so once.

Resumes append: a launch that resumes from iteration S first removes from
the folder's event files every event of a step after S (written by the
launch that died after its last snapshot: the resumed run makes those
steps again), then writes the restored log's entries that the files lack,
then goes on in a file of its own. So each step is in the files once.
Events are queued to tensorboardX's writer thread and flushed every
``flush_secs`` and at the end of a launch.
"""

import glob
import os
import socket
import struct
import sys

from chainer.training import extension

_HEADER = struct.Struct('<QI')     # record length, masked CRC-32C of the length


class TensorBoardLog(extension.Extension):
    """Rank 0's TensorBoard events: the log's entries and the signals' complete values.

    Register it with the log's trigger; it runs after the LogReport (its
    priority is below the snapshot extension's, so that :meth:`initialize`
    sees the restored log on resume).

    Args:
        out (str): the output folder (the TensorBoard run).
        observations (Observations or None): where the complete values wait.
        writer: a tensorboardX ``FileWriter`` class (tests; default: tensorboardX's).
        flush_secs (float): how often the writer thread flushes.
        log_report (str): the name of the LogReport extension.
    """

    priority = -200

    def __init__(self, out, observations=None, writer=None, flush_secs=30,
                 log_report='LogReport'):
        self.out = out
        self.observations = observations
        self._writer_class = writer
        self.flush_secs = flush_secs
        self.log_report = log_report
        self._writer = None
        self._last = -1

    @classmethod
    def create(cls, out, observations=None):
        """A TensorBoardLog, or None (and one line saying so) without tensorboardX."""
        try:
            from tensorboardX import FileWriter
        except ImportError as e:
            print('tensorboard: no event files ({}: {}); pip install tensorboardX to have '
                  'them'.format(type(e).__name__, e), file=sys.stderr, flush=True)
            return None
        return cls(out, observations, writer=FileWriter)

    def initialize(self, trainer):
        resumed = trainer.updater.iteration
        kept = trim_events(self.out, resumed)
        self._writer = self._writer_class(
            self.out, flush_secs=self.flush_secs,
            filename_suffix='.{}.iter{}'.format(os.getpid(), resumed))
        self._last = kept if kept is not None else -1
        self._write_log(trainer)

    def __call__(self, trainer):
        self._write_log(trainer)
        if self.observations is not None:
            for iteration, values in self.observations.pop_records():
                self._add(iteration, values)

    def finalize(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write_log(self, trainer):
        log = trainer.get_extension(self.log_report).log
        for entry in log:
            if entry['iteration'] > self._last:
                self._add(entry['iteration'], {k: v for k, v in entry.items()
                                               if k != 'iteration'})
                self._last = entry['iteration']

    def _add(self, step, values):
        from tensorboardX.proto.summary_pb2 import Summary
        scalars = [Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if scalars:
            self._writer.add_summary(Summary(value=scalars), global_step=step)


def event_files(folder):
    """The TensorBoard event files in `folder`, oldest first by name."""
    return sorted(glob.glob(os.path.join(folder, 'events.out.tfevents.*')))


def read_records(path):
    """The complete TFRecord records of `path` (bytes); a torn last record is left out.

    A record is its length (uint64), the masked CRC-32C of the length, the
    data, and the masked CRC-32C of the data. The length's CRC is checked
    (tensorboardX's implementation): a record whose length is damaged ends
    the file.
    """
    from tensorboardX.record_writer import masked_crc32c
    records = []
    with open(path, 'rb') as f:
        while True:
            header = f.read(_HEADER.size)
            if len(header) < _HEADER.size:
                break
            length, crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != crc:
                break
            data = f.read(length + 4)
            if len(data) < length + 4:
                break
            records.append(data[:length])
    return records


def trim_events(folder, last_step):
    """Drop every event after `last_step` from `folder`'s event files; the last step kept.

    Files with later events (or a torn last record) are rewritten with the
    others (written to a temporary file, then renamed); files left empty are
    removed. Returns the largest step of a summary still in the files (None
    if there is none).
    """
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import RecordWriter
    kept_max = None
    for path in event_files(folder):
        records = read_records(path)
        keep = []
        for data in records:
            event = Event.FromString(data)
            if event.step <= last_step:
                keep.append(data)
                if event.HasField('summary'):
                    kept_max = max(kept_max or 0, event.step)
        if len(keep) == len(records) and os.path.getsize(path) == _records_size(records):
            continue
        if not any(Event.FromString(d).HasField('summary') for d in keep):
            os.remove(path)
            continue
        temp = os.path.join(folder, '.tmp-trim-{}-{}'.format(socket.gethostname(), os.getpid()))
        writer = RecordWriter(temp)
        for data in keep:
            writer.write(data)
        writer.flush()
        writer.close()
        os.replace(temp, path)
    return kept_max


def _records_size(records):
    return sum(len(data) + _HEADER.size + 4 for data in records)
