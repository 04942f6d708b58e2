"""The doctor's checks: plain data in, ``OK``/``WARN``/``FAIL`` lines out.

Each ``check_*`` function takes what rank 0 has gathered and adds lines to a
:class:`Report`:

- ``rows``: one dict per rank, in rank order, as
  :func:`chainer_resnet.doctor.facts.rank_facts` builds it (``host``,
  ``python``, ``forwarded``, ``launcher_size``, ...);
- ``results``: one dict per rank, as
  :func:`chainer_resnet.doctor.probes.run_probes` returns it;
- the numbers the job asked for (``expected``; None when not given).

They read no environment and start no MPI, so a test writes the rows of a
16-node job by hand. Every ``FAIL:`` line is followed by a ``fix:`` line.
"""

import collections

from chainer_resnet.doctor.facts import first_line
from chainer_resnet.doctor.probes import fp16_tolerance

FIX_SINGLETON = (
    'the launcher did not start one MPI job: each process is a job of its own '
    '(srun without --mpi=pmix? an mpirun/mpiexec of another MPI than the '
    'library mpi4py runs on, printed above?). Launch with '
    'the mpirun of the MPI that mpi4py uses, or srun --mpi=pmix, or rebuild '
    'mpi4py against the site MPI: env MPICC=$(which mpicc) pip install '
    '--no-binary=mpi4py --force-reinstall mpi4py')


class Report:
    """The check lines, in order, and the number of failures.

    ``ok(text)`` adds ``'  OK    text'``; ``warn(text, fix=None)`` adds
    ``'  WARN  text'`` (and ``'        fix: ...'``); ``fail(text, fix)`` adds
    ``'FAIL: text'`` and ``'  fix: ...'`` and counts one failure. A warning
    never changes the exit status.
    """

    def __init__(self):
        self.lines = []
        self.failures = 0

    def ok(self, text):
        self.lines.append('  OK    ' + text)

    def warn(self, text, fix=None):
        self.lines.append('  WARN  ' + text)
        if fix:
            self.lines.append('        fix: ' + fix)

    def fail(self, text, fix):
        self.failures += 1
        self.lines.append('FAIL: ' + text)
        self.lines.append('  fix: ' + fix)

    def verdict(self):
        """The last line of the doctor's output."""
        if self.failures:
            return 'doctor: {} check(s) FAILED (see the FAIL: lines)'.format(self.failures)
        return 'doctor: all checks passed'


def mpi_family(text):
    """'Open MPI', 'MPICH' (MPICH, MVAPICH, Intel MPI: PMI-compatible) or None."""
    t = text.lower()
    if 'open mpi' in t or 'openrte' in t or 'open rte' in t or 'prte' in t:
        return 'Open MPI'
    if any(k in t for k in ('mpich', 'hydra', 'mvapich', 'intel(r) mpi')):
        return 'MPICH'
    return None


def check_software(findings, library, launchers, rep):
    """The findings of ``software_versions`` and the launchers' MPI family.

    ``findings``: [(level 'FAIL' or 'WARN', text, fix)]; ``library``: the
    first line of the MPI library's version; ``launchers``: [(name, path or
    None, first line of --version)] (None or empty when not probed). A
    launcher of another MPI family than the library is a WARN: the doctor was
    perhaps not launched with it, but the training might be.
    """
    for level, text, fix in findings:
        (rep.fail if level == 'FAIL' else rep.warn)(text, fix)
    lib_family = mpi_family(library)
    for name, path, version in launchers or []:
        fam = mpi_family(version) if path else None
        if fam and lib_family and fam != lib_family:
            rep.warn('{} on PATH is {} but mpi4py runs on {}: launched with '
                     'it, every process would be a one-rank job'.format(
                         name, fam, lib_family),
                     'put the {} of the MPI mpi4py uses first on PATH (module '
                     'load), or rebuild mpi4py against this one'.format(name))


def mpich_without_pmix(library):
    """True for an MPICH whose version text (``MPI_Get_library_version``,
    which lists its configure line) shows no PMIx: it aborts in MPI_Init under
    a PMIx launcher ("unsupported PMI version PMIx"), as MPICH from PyPI does.
    MVAPICH and Intel MPI print no configure line: not judged."""
    return library.lstrip().startswith('MPICH Version:') and 'pmix' not in library.lower()


def check_pmi(pmi, library, rep):
    """Can MPI start at all? Judged before MPI_Init, which would abort.

    ``pmi``: :func:`~chainer_resnet.doctor.facts.launcher_pmi`'s (interface,
    evidence, launcher); ``library``: the whole ``MPI_Get_library_version``
    text. Fails for an MPICH built without PMIx under a PMIx launcher
    (srun --mpi=pmix, Open MPI's mpirun); silent otherwise.
    """
    interface, evidence, launcher = pmi
    if interface != 'PMIx' or not mpich_without_pmix(library):
        return
    if launcher == 'Open MPI mpirun':
        fix = ('launch with the mpiexec of the MPI that mpi4py uses (MPICH: its hydra '
               'mpiexec), or make mpi4py use Open MPI: MPI4PY_LIBMPI=libmpi.so.40 for '
               'the mpi4py wheel from PyPI, or rebuild it: env MPICC=$(which mpicc) pip '
               'install --no-binary=mpi4py --force-reinstall mpi4py')
    else:
        fix = ('launch with this MPI\'s own mpiexec (jobs/slurm/mpirun.sh, MPIRUN=mpiexec), '
               'or load the site\'s MPI built with PMIx (MODULES) and rebuild mpi4py '
               'against it: env MPICC=$(which mpicc) pip install --no-binary=mpi4py '
               '--force-reinstall mpi4py; srun --mpi=pmi2 (SRUN_FLAGS=--mpi=pmi2) starts '
               'MPICH too, but PyPI\'s MPICH 5 on Slurm 22.05 failed in MPI_Init once in '
               'a few launches ("mpi/pmi2: invalid client request")')
    rep.fail('{} speaks PMIx ({} is set) but the MPI library mpi4py loads, {}, was built '
             'without PMIx: MPI_Init would abort ("unsupported PMI version PMIx"), so '
             'MPI was not started'.format(launcher, evidence, first_line(library)), fix)


def check_world(rows, expected, rep):
    """The world size (``len(rows)``) against ``expected`` ranks.

    A world of one rank when more were asked for means the launcher and
    mpi4py's MPI did not make one job; the launcher's size variables of rank
    0 (``launcher_size``), when they say more than 1, are named as evidence.
    """
    size = len(rows)
    if expected is None:
        rep.ok('world size {} (no --expect-world-size given)'.format(size))
        return
    if size == expected:
        rep.ok('world size {} (expected {})'.format(size, expected))
        return
    if size == 1:
        evidence = [(n, v, what) for n, v, what in rows[0]['launcher_size']
                    if v.isdigit() and int(v) > 1]
        text = 'only 1 rank(s) started but the job asked for {}'.format(expected)
        if evidence:
            n, v, what = evidence[0]
            text += ('; the launcher ({}) started this process as one of {} '
                     '({}={})'.format(what, v, n, v))
        rep.fail(text, FIX_SINGLETON)
    else:
        rep.fail('{} rank(s) started but the job asked for {}'.format(size, expected),
                 'make the launcher start nodes x GPUs-per-node ranks (mpirun -np, '
                 'srun --ntasks, #PBS select=N:...:mpiprocs=8, #SBATCH '
                 '--ntasks-per-node=8) and pass the same number here; the job '
                 'scripts derive it from the allocation and GPUS_PER_NODE')


def check_layout(rows, expected, rep):
    """Ranks per node (grouped by ``host``, as ChainerMN's intra_rank) against
    ``expected`` on every node; the first four nodes that differ are named."""
    per_node = collections.Counter(row['host'] for row in rows)
    if expected is None:
        counts = sorted(set(per_node.values()))
        rep.ok('ranks per node: {}'.format(', '.join(map(str, counts))))
        return
    wrong = {h: n for h, n in per_node.items() if n != expected}
    if not wrong:
        rep.ok('{} rank(s) on each of {} node(s) (expected {} per node)'.format(
            expected, len(per_node), expected))
        return
    sample = ', '.join('{} has {}'.format(h, n) for h, n in sorted(wrong.items())[:4])
    rep.fail('ranks per node differ from the {} expected: {}'.format(expected, sample),
             'place exactly {0} ranks on every node: mpirun --map-by ppr:{0}:node '
             '(Open MPI) or -ppn {0} (hydra), #PBS ...:mpiprocs={0}, #SBATCH '
             '--ntasks-per-node={0}; or set GPUS_PER_NODE to the GPUs a node '
             'really has'.format(expected))


def check_same_environment(rows, rep):
    """The same Python executable and ``NCCL_*`` variables as rank 0 on every
    rank; the first rank that differs is named."""
    ref = rows[0]
    odd_python = [r for r, row in enumerate(rows) if row['python'] != ref['python']]
    if odd_python:
        rep.fail('rank {} runs {} but rank 0 runs {}'.format(
            odd_python[0], rows[odd_python[0]]['python'], ref['python']),
            'activate the same virtualenv on every node and forward PATH to '
            'every rank (mpirun -x PATH, srun --export=ALL)')
    odd_env = [r for r, row in enumerate(rows) if row['forwarded'] != ref['forwarded']]
    if odd_env:
        r = odd_env[0]
        mine, theirs = ref['forwarded'], rows[r]['forwarded']
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        rep.fail('rank {} sees different NCCL_* variables than rank 0 ({})'.format(
            r, ', '.join(diff)),
            'forward the environment to every rank: Open MPI mpirun -x NAME for '
            'each variable, hydra -genvall, srun --export=ALL')
    if not odd_python and not odd_env:
        rep.ok('same Python and NCCL_* variables on every rank')


def check_mpi_sum(results, rep):
    """Every rank's ``mpi_sum`` equals the sum of rank+1 over all ranks."""
    size = len(results)
    expected_sum = size * (size + 1) // 2
    bad = [r for r, res in enumerate(results) if res.get('mpi_sum') != expected_sum]
    if bad:
        rep.fail('MPI allreduce: rank {} got {} for the sum of rank+1, expected {}'
                 .format(bad[0], results[bad[0]].get('mpi_sum'), expected_sum),
                 'the MPI library is broken or mismatched; rebuild mpi4py against '
                 'the MPI the launcher belongs to')
    else:
        rep.ok('MPI allreduce: sum of rank+1 over {} rank(s) = {}'.format(
            size, expected_sum))


def check_gpus(rows, results, rep):
    """A GPU of its own for every rank: no ``gpu_error``, and no two ranks of
    one host on the same PCI bus id (``gpu_bus``). Silent when all is well
    (the GPUs are in the rank table) and on CPU (no GPU keys)."""
    gpu_errors = [(r, res['gpu_error']) for r, res in enumerate(results)
                  if 'gpu_error' in res]
    if gpu_errors:
        r, err = gpu_errors[0]
        rep.fail('rank {} ({}) has no GPU of its own: {}'.format(
            r, rows[r]['host'], err),
            'give every rank a GPU: as many ranks per node as visible GPUs (the '
            'trainer takes GPU = local rank among them), or exactly one GPU visible '
            'to each rank (srun --gpus-per-task=1 / --gpu-bind: the trainer takes it)')
    # By bus id, not by CUDA_VISIBLE_DEVICES: a rank confined to one GPU
    # (cgroups) sees it as device 0 whichever GPU it is.
    seen = {}
    for r, res in enumerate(results):
        if 'gpu_bus' in res:
            key = (rows[r]['host'], res['gpu_bus'])
            if key in seen:
                rep.fail('ranks {} and {} share GPU {} on {}'.format(
                    seen[key], r, res['gpu_bus'], rows[r]['host']),
                    'one rank per GPU: check CUDA_VISIBLE_DEVICES and the '
                    'ranks per node')
                break
            seen[key] = r


def check_allreduces(device, results, rep):
    """The ChainerMN communicator started, and every allreduce is within its
    tolerance on every rank (the worst rank is named).

    ``device`` ('cpu' or 'gpu') says which allreduces ran: ``fp16_mpi``, then
    ``nccl32`` and ``nccl16`` on GPU or ``naive`` on CPU. One that did not run
    fails, unless a communicator or GPU error above already explains why.
    """
    size = len(results)
    gpu_errors = [r for r, res in enumerate(results) if 'gpu_error' in res]
    comm_errors = [(r, res['comm_error']) for r, res in enumerate(results)
                   if 'comm_error' in res]
    if comm_errors:
        r, err = comm_errors[0]
        what = 'pure_nccl (NCCL)' if device == 'gpu' else 'naive (MPI)'
        rep.fail('ChainerMN {} communicator failed on rank {}: {}'.format(what, r, err),
                 'rerun with NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET; set '
                 'NCCL_SOCKET_IFNAME to an interface every node has (ip -br addr) '
                 'and NCCL_IB_HCA to the HCA ports (ibstat); NCCL_IB_DISABLE=1 '
                 'only to tell InfiniBand problems from others'
                 if device == 'gpu' else
                 'check that chainer 7.8.1 and mpi4py import on every rank')

    tol16 = fp16_tolerance(size)
    checks = [('fp16_mpi', 'fp16 allreduce over MPI (fp16 on the wire, fp16 sum, '
               'x 1/size, as pure_nccl does{})'.format(
                   '' if device == 'gpu' else
                   '; CPU training itself averages in fp32'), tol16)]
    if device == 'gpu':
        checks += [('nccl32', 'NCCL allreduce (pure_nccl, fp32): '
                    'multi_node_mean_grad equals the mean', 1e-5),
                   ('nccl16', 'NCCL fp16 allreduce (pure_nccl, '
                    'allreduce_grad_dtype=float16) vs the fp32 mean', tol16)]
    else:
        checks += [('naive', 'ChainerMN naive communicator (MPI, fp32): '
                    'multi_node_mean_grad equals the mean', 1e-5)]
    for key, text, tol in checks:
        errors = [(r, res[key]) for r, res in enumerate(results) if key in res]
        if not errors:
            if not comm_errors and not gpu_errors:
                rep.fail(text + ': did not run', 'see the errors above')
            continue
        worst_rank, worst = max(errors, key=lambda e: e[1])
        if worst <= tol:
            rep.ok('{}: max relative error {:.1e} (tolerance {:.1e})'.format(
                text, worst, tol))
        else:
            rep.fail('{}: max relative error {:.3g} on rank {} exceeds {:.1e}'.format(
                text, worst, worst_rank, tol),
                'an allreduce returns wrong numbers: a mismatched or broken '
                'MPI/NCCL; rerun with NCCL_DEBUG=INFO and compare library versions '
                'on all nodes')


def check_nccl_network(rows, results, rep):
    """Between nodes, NCCL runs over InfiniBand/RoCE, not sockets.

    ``results[r]['nccl_net']`` is the network NCCL chose on rank r (see
    :func:`~chainer_resnet.doctor.facts.nccl_network`). On one node NCCL
    needs no network: silent. Sockets between nodes fail, unless rank 0's
    ``NCCL_NET=Socket`` asks for them (a cluster without InfiniBand); no
    answer from NCCL is a warning.
    """
    if len({row['host'] for row in rows}) < 2:
        return
    found = [(r, res['nccl_net'], res.get('nccl_net_detail', ''))
             for r, res in enumerate(results) if 'nccl_net' in res]
    if not found:
        return      # the communicator did not start: failed above
    socket = [f for f in found if f[1] == 'Socket']
    unknown = [f for f in found if f[1] is None]
    if socket:
        r, _, detail = socket[0]
        if rows[0]['forwarded'].get('NCCL_NET', '').lower() == 'socket':
            rep.ok('NCCL between nodes: sockets, as NCCL_NET=Socket asks ({})'.format(
                detail or 'NET/Socket'))
            return
        hca = rows[0]['forwarded'].get('NCCL_IB_HCA')
        rep.fail('NCCL falls back to sockets (NET/Socket) between the nodes on {} of {} '
                 'rank(s), first rank {} on {}{}: allreduces over TCP, many times slower '
                 'than InfiniBand'.format(
                     len(socket), len(found), r, rows[r]['host'],
                     ' ({})'.format(detail) if detail else ''),
                 '{}let NCCL find the HCAs (NCCL_IB_HCA empty) or name them as the nodes '
                 'have them (ibstat, ibv_devices: e.g. NCCL_IB_HCA=mlx5_0:1,mlx5_1:1); '
                 'NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET shows why IB was not used. '
                 'A cluster without InfiniBand/RoCE: set NCCL_NET=Socket'.format(
                     'NCCL_IB_HCA={} matches no HCA NCCL can use: '.format(hca)
                     if hca else ''))
    elif unknown:
        rep.warn('NCCL did not say which network it uses between the nodes (rank {})'.format(
            unknown[0][0]), 'rerun with NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET and look '
                 'for "Using network"')
    else:
        rep.ok('NCCL between nodes: {} ({})'.format(found[0][1], found[0][2] or 'NET/' +
                                                   found[0][1]))
