"""The doctor's command line and its run: gather, probe, let rank 0 judge and print.

:func:`run` is what every rank executes; :func:`report` turns what rank 0
gathered into the printed text and the exit status, from plain data only.
"""

import argparse
import faulthandler

import chainer_resnet  # noqa: F401  (must precede chainer: compatibility hook)
from chainer_resnet.doctor import checks, facts, probes


def parse_args(argv):
    """The flags (``--help`` prints the package docstring); exits 2 on a usage error."""
    from chainer_resnet import doctor
    p = argparse.ArgumentParser(
        prog='python -m chainer_resnet.doctor', description=doctor.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', choices=('cpu', 'gpu'), default='cpu',
                   help="'gpu': check CuPy/cuDNN/NCCL, the GPU of each rank and "
                   "NCCL allreduces (pure_nccl, fp32 and fp16); 'cpu': MPI only")
    p.add_argument('--expect-world-size', type=int, metavar='N',
                   help='the number of ranks the job asked for (nodes x GPUs per node)')
    p.add_argument('--expect-gpus-per-node', type=int, metavar='N',
                   help='ranks expected on every node (one per GPU)')
    p.add_argument('--ranks-only', action='store_true',
                   help='only the rank-count checks: no versions, no allreduce')
    p.add_argument('--timeout', type=float, default=300, metavar='SECONDS',
                   help='a rank still running after this long prints where it '
                   'hangs and exits (default: %(default)s; 0: never)')
    args = p.parse_args(argv)
    for name in ('expect_world_size', 'expect_gpus_per_node'):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error('--{} must be >= 1'.format(name.replace('_', '-')))
    return args


def run(argv=None):
    """Run the checks; returns the exit status (the same on every rank)."""
    args = parse_args(argv)
    if args.timeout > 0:
        # A watchdog thread: works even while a rank is blocked inside MPI/NCCL.
        faulthandler.dump_traceback_later(args.timeout, exit=True)

    launchers = None
    if facts.launcher_rank() in (None, '0') and not args.ranks_only:
        launchers = facts.probe_launchers()   # before MPI starts: no fork after it

    try:
        MPI = load_mpi()
    except Exception as e:
        print('FAIL: cannot start MPI through mpi4py: {}\n  fix: install mpi4py '
              'built against the site MPI (env MPICC=$(which mpicc) pip install '
              '--no-binary=mpi4py mpi4py) and load the same MPI module in the '
              'job'.format(e), flush=True)
        return 1
    # An MPI that cannot speak the launcher's PMI aborts inside MPI_Init,
    # before any report: judged first, from the environment and the library.
    rep = checks.Report()
    checks.check_pmi(facts.launcher_pmi(), MPI.Get_library_version(), rep)
    if rep.failures:
        if facts.launcher_rank() in (None, '0'):
            print('\n'.join(['chainer_resnet doctor: MPI not started, device {}'.format(
                args.device), '== checks =='] + rep.lines + [rep.verdict()]), flush=True)
        return 1
    if not MPI.Is_initialized():
        MPI.Init_thread(MPI.THREAD_MULTIPLE)   # what importing mpi4py.MPI does by default
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()

    rows = comm.gather(facts.rank_facts(MPI), root=0)
    hosts = comm.bcast([r['host'] for r in rows] if rank == 0 else None, root=0)
    intra_rank = facts.intra_ranks(hosts)[rank][0]
    local = {} if args.ranks_only else probes.run_probes(
        MPI, comm, args.device, intra_rank)
    results = comm.gather(local, root=0)

    status = 0
    if rank == 0:
        software = None if args.ranks_only else facts.software_versions(args.device)
        text, status = report(args, rows, results, facts.mpi_versions(MPI),
                              software, launchers)
        print(text, flush=True)
    status = comm.bcast(status, root=0)
    faulthandler.cancel_dump_traceback_later()
    return status


def load_mpi():
    """mpi4py.MPI, imported without starting MPI (unless another import did)."""
    import sys
    if 'mpi4py.MPI' not in sys.modules:
        import mpi4py
        mpi4py.rc.initialize = False
        mpi4py.rc.finalize = True
    from mpi4py import MPI
    return MPI


def report(args, rows, results, mpi, software, launchers):
    """(the text rank 0 prints, the exit status 0 or 1), from plain data.

    ``args``: the parsed flags; ``rows`` and ``results``: one dict per rank
    (:func:`~chainer_resnet.doctor.facts.rank_facts`,
    :func:`~chainer_resnet.doctor.probes.run_probes`); ``mpi``:
    :func:`~chainer_resnet.doctor.facts.mpi_versions`; ``software``: the
    (rows, findings) of :func:`~chainer_resnet.doctor.facts.software_versions`,
    None with ``--ranks-only``; ``launchers``:
    :func:`~chainer_resnet.doctor.facts.probe_launchers` or None.
    """
    out = []
    nodes = len({r['host'] for r in rows})
    out.append('chainer_resnet doctor: {} rank(s) on {} node(s), device {}{}'.format(
        len(rows), nodes, args.device, ' (rank counts only)' if args.ranks_only else ''))
    rep = checks.Report()

    if args.ranks_only:
        out.append('  mpi4py {} on {}'.format(mpi['mpi4py'], mpi['library']))
    else:
        out.append('== software ==')
        sw_rows, findings = software
        sw_rows = list(sw_rows)
        sw_rows.append(('mpi4py', '{} (build config: {})'.format(
            mpi['mpi4py'], ', '.join('{}={}'.format(k, v) for k, v in
                                     sorted(mpi['config'].items())) or
            'none recorded: a binary wheel')))
        sw_rows.append(('MPI library', mpi['library'] + ' (the libmpi mpi4py runs on)'))
        for name, path, version in launchers or []:
            sw_rows.append((name, '{}: {}'.format(path, version) if path else version))
        forwarded = rows[0]['forwarded']
        sw_rows.append(('NCCL env', ' '.join('{}={}'.format(k, v) for k, v in
                                             forwarded.items()) or '(none set)'))
        width = max(len(n) for n, _ in sw_rows)
        out.extend('  {:<{w}}  {}'.format(n, t, w=width) for n, t in sw_rows)
        checks.check_software(findings, mpi['library'], launchers, rep)

    out.append('== ranks ==')
    intra = facts.intra_ranks([r['host'] for r in rows])
    table = [('rank', 'host', 'local', 'local-rank variable',
              'CUDA_VISIBLE_DEVICES', 'GPU')]
    for rank, (row, (ir, isz), res) in enumerate(zip(rows, intra, results)):
        gpu = res.get('gpu_desc') or ('error' if 'gpu_error' in res else '-')
        table.append((str(rank), row['host'], '{}/{}'.format(ir, isz),
                      row['local_var'], row['cuda_visible'], gpu))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    out.extend('  ' + '  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
               for r in table)

    out.append('== checks ==')
    checks.check_world(rows, args.expect_world_size, rep)
    checks.check_layout(rows, args.expect_gpus_per_node, rep)
    checks.check_same_environment(rows, rep)
    if not args.ranks_only:
        checks.check_mpi_sum(results, rep)
        checks.check_gpus(rows, results, rep)
        checks.check_allreduces(args.device, results, rep)
        if args.device == 'gpu':
            checks.check_nccl_network(rows, results, rep)

    out.extend(rep.lines)
    out.append(rep.verdict())
    return '\n'.join(out), 1 if rep.failures else 0


def main(argv=None):
    """The ``python -m chainer_resnet.doctor`` entry point: :func:`run`."""
    return run(argv)
