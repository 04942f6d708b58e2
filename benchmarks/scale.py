#!/usr/bin/env python
"""What a launch costs as ranks and images grow: start-up and resume, measured
here and extrapolated to the paper's 1,024 ranks.

    nice -n 10 .venv/bin/python benchmarks/scale.py            # ~3 min on 2 cores
    .venv/bin/python benchmarks/scale.py --quick               # small sizes, ~15 s

Everything runs through tests/scale_probe.py under the virtualenv's mpiexec
(the probe tests/test_scale.py asserts counts with):

1. **One process**: the cost of the index itself for an ImageNet-sized list
   (1,281,167 lines): reading it with ``ListDataset(check_files=False)``, and
   the pickle the broadcast sends (size, pickling and unpickling time).
2. **Start-up vs ranks** (1, 2, 4, 8 at 10^5 lines) **and vs list size**
   (10^4, 10^5, 1.28 x 10^6 lines at 4 ranks): wall time (the slowest rank)
   and per-rank filesystem metadata calls of ``chainer_resnet.data.shards.open_data``
   (rank 0 indexes, one broadcast, each rank checks its shard) beside the old
   way (every rank opens the lists with ``check_files=True``). Image files
   are not created: the probe's counted ``os.stat`` answers for paths under
   the root, so the "old" times here are CPU only; on a parallel filesystem
   each call is a round trip to a metadata server (the model below).
3. **Resume vs ranks** (1, 2, 4) from a snapshot of ``--megabytes`` (300:
   ResNet-50's weights and RMSprop state in float32): ``Snapshot.initialize``
   (rank 0 reads, one ``Bcast``) beside a serial fan-out (rank 0 sends the
   file to each rank in turn).
4. **The model**: the measured constants, with stated assumptions about the
   filesystem and the network, extrapolated to 1,024 ranks.

Prints Markdown for benchmarks/README.md; ``--json`` keeps the raw numbers.
Nothing here is asserted.
"""

import argparse
import json
import math
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROBE = os.path.join(ROOT, 'tests', 'scale_probe.py')
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

IMAGENET_TRAIN = 1281167
IMAGENET_VAL = 50000
# ImageNet's training paths below a root: n01440764/n01440764_10026.JPEG.
_LINE = 'n{:08d}/n{:08d}_{}.JPEG {}\n'

# Assumptions of the model (say so when quoting it).
MODEL = {
    'ranks': 1024,
    'ranks_per_node': 8,
    'metadata_ops_per_s': 1e5,     # a Lustre/GPFS metadata server, shared with other users
    'link_bytes_per_s': 6e9,       # one node's InfiniBand FDR link (56 Gb/s), per direction
    'latency_s': 5e-6,             # alpha: one inter-node message
    'fs_read_bytes_per_s': 1e9,    # one client reading one file from the parallel filesystem
}


def write_list(path, count, classes=1000):
    with open(path, 'w') as f:
        per = -(-count // classes)
        f.writelines(_LINE.format(i // per, i // per, i, i // per) for i in range(count))


def mpirun(n, args, timeout=900):
    from run_mpi import mpiexec
    env = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1')
    cmd = [mpiexec(), '-n', str(n), sys.executable, PROBE] + [str(a) for a in args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise SystemExit('probe failed: {}\n{}'.format(' '.join(cmd),
                                                       (done.stdout + done.stderr)[-4000:]))
    with open(args[1]) as f:
        return json.load(f)


# --- 1. the index in one process ----------------------------------------------------

def index_costs(work, count):
    from chainer_resnet.data import layouts
    path = os.path.join(work, 'index.txt')
    write_list(path, count)
    root = os.path.join(work, 'imagenet', 'train')   # a typical length of root
    os.makedirs(root, exist_ok=True)
    start = time.perf_counter()
    ds = layouts.ListDataset(path, root, num_classes=1000, check_files=False)
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    blob = pickle.dumps(ds, protocol=pickle.HIGHEST_PROTOCOL)
    dump_s = time.perf_counter() - start
    start = time.perf_counter()
    pickle.loads(blob)
    load_s = time.perf_counter() - start
    return {'lines': count, 'root': root, 'read_s': read_s, 'pickle_bytes': len(blob),
            'pickle_s': dump_s, 'unpickle_s': load_s,
            'bytes_per_image': len(blob) / count}


# --- 2. start-up --------------------------------------------------------------------

def startup(work, n, count):
    folder = os.path.join(work, 'startup-{}'.format(count))
    os.makedirs(os.path.join(folder, 'images'), exist_ok=True)
    train, val = os.path.join(folder, 'train.txt'), os.path.join(folder, 'val.txt')
    if not os.path.exists(train):
        write_list(train, count, classes=10)
        write_list(val, max(count // 25, 100), classes=10)
    out = os.path.join(folder, 'n{}.json'.format(n))
    result = mpirun(n, ['startup', out, '--train', train, '--val', val,
                        '--root', os.path.join(folder, 'images')])
    row = {'ranks': n, 'lines': count}
    for key, name in (('startup', 'new'), ('control', 'old')):
        ranks = result[key]
        row[name + '_s'] = max(r['seconds'] for r in ranks)
        row[name + '_calls'] = max(r['metadata_calls'] for r in ranks)
        row[name + '_calls_total'] = sum(r['metadata_calls'] for r in ranks)
    row['bcast_bytes'] = result['startup'][0]['bytes_sent']
    new = result['startup']
    row['new_index_s'] = new[0]['index_s']
    row['new_bcast_s'] = new[0]['mpi_s']            # rank 0: pickling + sending
    row['new_receive_s'] = max([r['mpi_s'] for r in new[1:]], default=0.0)
    row['new_check_s'] = max(r['check_s'] for r in new)
    row['shard'] = max(r['train_shard'] + r['val_shard'] for r in result['startup'])
    return row


# --- 3. resume ----------------------------------------------------------------------

def resume(work, n, megabytes):
    folder = tempfile.mkdtemp(prefix='resume-n{}-'.format(n), dir=work)
    result = mpirun(n, ['resume', os.path.join(folder, 'r.json'), '--work', folder,
                        '--megabytes', megabytes])
    row = {'ranks': n}
    for key, name in (('resume', 'bcast'), ('control', 'fanout')):
        ranks = result[key]
        row[name + '_s'] = max(r['seconds'] for r in ranks)
        row[name + '_bytes_sent'] = ranks[0]['bytes_sent']
        row[name + '_calls'] = ranks[0]['calls']
        row[name + '_mpi_s'] = ranks[0]['mpi_s']
        row[name + '_equal'] = all(r['same_state'] for r in ranks)
    row['snapshot_bytes'] = result['resume'][0]['snapshot_bytes']
    shutil.rmtree(folder, ignore_errors=True)
    return row


# --- 4. the model -------------------------------------------------------------------

def bcast_s(size_bytes, ranks, m=MODEL):
    """(low, high) seconds of one MPI broadcast over the nodes (alpha-beta):
    scatter + allgather (large messages) and a binomial tree of whole messages."""
    nodes = max(1, ranks // m['ranks_per_node'])
    steps = math.ceil(math.log2(nodes)) if nodes > 1 else 0
    beta = size_bytes / m['link_bytes_per_s']
    low = 2 * steps * m['latency_s'] + 2 * (nodes - 1) / nodes * beta
    high = steps * (m['latency_s'] + beta)
    return low, high


def extrapolate(index, startup_rows, resume_rows, megabytes, m=MODEL):
    p = m['ranks']
    n_train, n_val = IMAGENET_TRAIN, IMAGENET_VAL
    mds = m['metadata_ops_per_s']
    per_line_read = index['read_s'] / index['lines']
    per_line_unpickle = index['unpickle_s'] / index['lines']
    per_line_pickle = index['pickle_s'] / index['lines']
    index_bytes = index['bytes_per_image'] * (n_train + n_val)
    low, high = bcast_s(index_bytes, p)
    read = per_line_read * (n_train + n_val)
    old_ops = p * (n_train + n_val)
    new_ops = n_train + n_val + 6 * p
    snap = megabytes * 2 ** 20
    s_low, s_high = bcast_s(snap, p)
    deserialise = max(r['bcast_s'] for r in resume_rows if r['ranks'] == 1)
    return {
        'old_metadata_ops': old_ops, 'old_metadata_s': old_ops / mds, 'old_read_s': read,
        'new_metadata_ops': new_ops, 'new_metadata_s': new_ops / mds,
        'new_rank0_s': read + per_line_pickle * (n_train + n_val),
        'index_bytes': index_bytes, 'index_bcast_s': (low, high),
        'unpickle_s': per_line_unpickle * (n_train + n_val),
        'per_rank_checks': (n_train + n_val) / p,
        'fanout_s': (p - 1) * (m['latency_s'] + snap / m['link_bytes_per_s']),
        'snapshot_bcast_s': (s_low, s_high),
        'snapshot_read_s': snap / m['fs_read_bytes_per_s'],
        'every_rank_reads_s': p * snap / (100e9),   # an aggregate 100 GB/s filesystem
        'resume_local_s': deserialise,
    }


def _s(seconds):
    if seconds >= 3600:
        return '{:.1f} h'.format(seconds / 3600)
    if seconds >= 60:
        return '{:.0f} min'.format(seconds / 60)
    return '{:.2g} s'.format(seconds)


def print_report(facts, index, startup_rows, resume_rows, model, megabytes):
    print('machine: {}; {} cores; Python {}; {}'.format(
        platform.node(), os.cpu_count(), platform.python_version(), facts['date']))
    print('load average at start: {}\n'.format(facts['load']))
    print('### The index in one process ({:,} lines)\n'.format(index['lines']))
    print('| read the list (`check_files=False`) | pickle | size | per image | unpickle |')
    print('|---|---|---|---|---|')
    print('| {:.2f} s | {:.2f} s | {:.1f} MB | {:.0f} B | {:.2f} s |\n'.format(
        index['read_s'], index['pickle_s'], index['pickle_bytes'] / 1e6,
        index['bytes_per_image'], index['unpickle_s']))
    print('### Start-up: `open_data` (new) vs every rank opening the lists (old)\n')
    print('| ranks | lines | old: s | old: metadata calls per rank | new: s | '
          'new: rank 0 index / bcast / slowest check, s | '
          'new: metadata calls per rank (max) | shard (train + val, max) | '
          'broadcast |')
    print('|---|---|---|---|---|---|---|---|---|')
    for r in startup_rows:
        print('| {} | {:,} | {:.2f} | {:,} | {:.2f} | {:.2f} / {:.2f} / {:.2f} | {:,} | {:,} '
              '| {:.1f} MB |'.format(
                  r['ranks'], r['lines'], r['old_s'], r['old_calls'], r['new_s'],
                  r['new_index_s'], r['new_bcast_s'], r['new_check_s'], r['new_calls'],
                  r['shard'], r['bcast_bytes'] / 1e6))
    print('\n### Resume from a {:.0f} MB snapshot\n'.format(megabytes * 2 ** 20 / 1e6))
    print('| ranks | one Bcast: resume s | rank 0 in MPI calls, s | rank 0 sent | '
          'serial fan-out: resume s | rank 0 in MPI calls, s | rank 0 sent | state equal |')
    print('|---|---|---|---|---|---|---|---|')
    for r in resume_rows:
        print('| {} | {:.2f} | {:.2f} | {:.0f} MB | {:.2f} | {:.2f} | {:.0f} MB | {} |'.format(
            r['ranks'], r['bcast_s'], r['bcast_mpi_s'], r['bcast_bytes_sent'] / 1e6,
            r['fanout_s'], r['fanout_mpi_s'], r['fanout_bytes_sent'] / 1e6,
            r['bcast_equal'] and r['fanout_equal']))
    m = model
    print('\n### At {ranks:,} ranks ({ranks_per_node} per node): the model\n'.format(**MODEL))
    print('Assumptions: {}\n'.format(', '.join(
        '{}={:g}'.format(k, v) for k, v in MODEL.items())))
    print('- start-up, old: {:,.0f} metadata calls ({} ranks x ImageNet train + val) '
          '= {} at the metadata server; every rank also reads both lists ({}).'.format(
              m['old_metadata_ops'], MODEL['ranks'], _s(m['old_metadata_s']),
              _s(m['old_read_s'])))
    print('- start-up, new: rank 0 reads and pickles the index ({}); one broadcast of '
          '{:.0f} MB ({} to {}); every rank unpickles it ({}) and checks {:,.0f} files: '
          '{:,.0f} metadata calls in all = {} at the metadata server.'.format(
              _s(m['new_rank0_s']), m['index_bytes'] / 1e6, _s(m['index_bcast_s'][0]),
              _s(m['index_bcast_s'][1]), _s(m['unpickle_s']), m['per_rank_checks'],
              m['new_metadata_ops'], _s(m['new_metadata_s'])))
    print('- resume, {:.0f} MB: rank 0 reads the file ({}), one Bcast ({} to {}), every '
          'rank loads the state ({}, measured at 1 rank); a serial fan-out would take {}, '
          'every rank reading the file {} (an aggregate 100 GB/s filesystem).'.format(
              megabytes * 2 ** 20 / 1e6, _s(m['snapshot_read_s']),
              _s(m['snapshot_bcast_s'][0]), _s(m['snapshot_bcast_s'][1]),
              _s(m['resume_local_s']), _s(m['fanout_s']), _s(m['every_rank_reads_s'])))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='small sizes only')
    p.add_argument('--work', help='scratch folder (default: a temporary one)')
    p.add_argument('--megabytes', type=float, default=300.0,
                   help='resume: trainer state size (default 300)')
    p.add_argument('--json', help='also write the raw numbers here')
    args = p.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix='scale-bench-')
    os.makedirs(work, exist_ok=True)
    if args.quick:
        index_lines, base, ranks, sizes, size_ranks = 100000, 10000, (1, 2), (2000,), 2
        resume_ranks, megabytes = (1, 2), 10
    else:
        index_lines, base, ranks, size_ranks = IMAGENET_TRAIN, 100000, (1, 2, 4, 8), 4
        sizes, resume_ranks, megabytes = (10000, IMAGENET_TRAIN), (1, 2, 4), args.megabytes
    facts = {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
             'load': ', '.join('{:.2f}'.format(v) for v in os.getloadavg())}
    index = index_costs(work, index_lines)
    startup_rows = [startup(work, n, base) for n in ranks]
    startup_rows += [startup(work, size_ranks, size) for size in sizes]
    startup_rows.sort(key=lambda r: (r['lines'] != base, r['lines'], r['ranks']))
    resume_rows = [resume(work, n, megabytes) for n in resume_ranks]
    model = extrapolate(index, startup_rows, resume_rows, megabytes)
    print_report(facts, index, startup_rows, resume_rows, model, megabytes)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'facts': facts, 'index': index, 'startup': startup_rows,
                       'resume': resume_rows, 'model': model, 'assumptions': MODEL}, f,
                      indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
