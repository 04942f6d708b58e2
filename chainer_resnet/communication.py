"""Communicator factory and the other pieces every rank needs at start-up.

Order matters (field-notes.md, problem 1): start the forkserver *before*
the communicator, because forking a process that has initialised MPI over
InfiniBand (or CUDA) can crash the child; the forkserver is forked while the
process is still clean and every later loader worker comes from it.
"""

import multiprocessing
import os
import signal
import sys

LOCAL_RANK_VARIABLES = ('OMPI_COMM_WORLD_LOCAL_RANK', 'MV2_COMM_WORLD_LOCAL_RANK',
                        'MPI_LOCALRANKID', 'SLURM_LOCALID', 'PMI_LOCAL_RANK')
# What launchers set to tell a process its rank: lets a process know whether
# it is rank 0 before MPI is initialised (to say an argument error once).
LAUNCHER_RANK_VARIABLES = ('OMPI_COMM_WORLD_RANK', 'PMI_RANK', 'PMIX_RANK',
                           'MV2_COMM_WORLD_RANK', 'SLURM_PROCID')


class CommunicationError(RuntimeError):
    """Set-up of the processes, devices or communicator went wrong."""


def _noop():
    pass


def start_forkserver():
    """Use the forkserver start method and start the server now.

    Must run before the communicator is created (see the module docstring).
    A dummy process is started and joined so the server really exists.

    The server, and so every loader process it forks, ignores the stop
    signals (SIGTERM, SIGINT, SIGHUP: chainer_resnet/signals.py): Slurm sends
    them to every process of a job and hydra to each rank's process group,
    and a loader (or the server) that died of one would lose the batch its
    rank needs to reach the iteration where every rank stops. They are
    started with those signals ignored, which a new process inherits; the
    rank blocks them meanwhile, so one that arrives then is delivered after,
    not lost. The server ends with its rank; the loaders with the server
    (chainer_resnet/data/workers.py).
    """
    if multiprocessing.get_start_method(allow_none=True) != 'forkserver':
        multiprocessing.set_start_method('forkserver', force=True)
    stop = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    handlers = {signum: signal.signal(signum, signal.SIG_IGN) for signum in stop}
    try:
        p = multiprocessing.Process(target=_noop)
        p.start()
        p.join()
    finally:
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def install_abort_on_error():
    """Make an uncaught exception on any rank abort the whole MPI job.

    Without it, one rank dies and the others wait forever in the next
    collective (field-notes.md, problem 2). Uses ChainerMN's global except
    hook, which prints the traceback and calls ``MPI_Abort``.
    """
    from chainermn import global_except_hook
    if sys.excepthook is not global_except_hook._global_except_hook:
        global_except_hook.add_hook()


def abort_if_distributed(code):
    """End every rank with `code` when MPI runs more than one process.

    Used after a user error was printed: exiting one rank alone would leave
    the others waiting in their next collective.
    """
    mpi = sys.modules.get('mpi4py.MPI')
    if mpi is not None and mpi.Is_initialized() and mpi.COMM_WORLD.Get_size() > 1:
        mpi.COMM_WORLD.Abort(code)


def launcher_rank():
    """This process's rank as the launcher numbered it (a string), or None."""
    for name in LAUNCHER_RANK_VARIABLES:
        if name in os.environ:
            return os.environ[name]
    return None


def process_rank():
    """This process's rank in MPI_COMM_WORLD, also before MPI is initialised
    (from the launcher's variables); 0 for a process started alone."""
    mpi = sys.modules.get('mpi4py.MPI')
    if mpi is not None and mpi.Is_initialized():
        return mpi.COMM_WORLD.Get_rank()
    rank = launcher_rank()
    return int(rank) if rank is not None and rank.isdigit() else 0


def agree(mpi_comm, error):
    """Raise on every rank the user error that some ranks found, said once by rank 0.

    For a check each rank makes on its own (its node's CuPy, its GPU) before a
    collective: a rank that raised alone would leave the others waiting in
    that collective. One small allreduce when nothing failed; only when some
    rank failed, their errors are gathered and every rank raises the lowest
    rank's (with ``collective_rank`` set, so the trainer prints it once and
    no rank aborts), saying on how many ranks and where it happened.

    Args:
        mpi_comm: an mpi4py communicator (``MPI.COMM_WORLD``, ``comm.mpi_comm``).
        error (Exception or None): this rank's error.
    """
    from mpi4py import MPI
    if not mpi_comm.allreduce(error is not None, op=MPI.LOR):
        return
    found = [(rank, host, e) for rank, (host, e) in enumerate(mpi_comm.allgather(
        (os.uname().nodename, None if error is None else _picklable(
            error, (type(error),)))))
        if e is not None]
    rank, host, first = found[0]
    if len(found) < mpi_comm.Get_size():
        hosts = sorted({h for _, h, _ in found})
        first = type(first)('on {} of {} ranks (rank {} on host {}{}): {}'.format(
            len(found), mpi_comm.Get_size(), rank, host,
            '; hosts: ' + ', '.join(hosts[:8]) + (' ...' if len(hosts) > 8 else '')
            if len(hosts) > 1 else '', first))
    first.collective_rank = mpi_comm.Get_rank()
    raise first


def create_communicator(*, gpu, allreduce_grad_dtype='float16'):
    """ChainerMN communicator for this run.

    On GPUs: ``pure_nccl`` with gradients cast to `allreduce_grad_dtype` only
    for the allreduce (the paper's fp16, docs/method.md §5). On CPU: ``naive``
    (MPI allreduce in the gradients' own dtype, fp32); ChainerMN supports the
    fp16 option only on ``pure_nccl``. A GPU stack missing on any rank
    (:func:`check_gpu_stack`) ends every rank with one message (:func:`agree`).
    """
    import chainermn
    if gpu:
        import numpy
        from mpi4py import MPI
        problem = None
        try:
            check_gpu_stack()
        except CommunicationError as e:
            problem = e
        agree(MPI.COMM_WORLD, problem)
        return chainermn.create_communicator(
            'pure_nccl', allreduce_grad_dtype=numpy.dtype(allreduce_grad_dtype))
    return chainermn.create_communicator('naive')


def check_gpu_stack():
    """Raise CommunicationError unless CuPy, a usable NCCL and a GPU are there.

    Without this, ChainerMN reports a missing CuPy as "PureNcclCommunicator
    requires NCCL 2.0+", which names neither the cause nor the fix, and a
    missing NCCL passes ``import cupy.cuda.nccl`` (CuPy imports it either way)
    and ends in ChainerMN's traceback. NCCL is judged first: it needs no GPU.
    """
    from chainer_resnet import gpu
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CuPy install
        raise CommunicationError(
            'a GPU run (--device gpu or a GPU id) needs CuPy, but {}: {}. Install CuPy for '
            'your CUDA (README, "Supported GPU stacks"), or run on CPU with --device '
            'cpu.'.format(type(e).__name__, e)) from None
    usable, text = gpu.nccl_status()
    if not usable:
        raise CommunicationError(
            'a GPU run trains with the pure_nccl communicator, but {}.'.format(text))
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # a CUDA error from the driver
        raise CommunicationError(
            'a GPU run (--device gpu or a GPU id) needs a visible GPU, but CUDA says {}: {}. '
            'Check the driver and that the job was given GPUs, or run on CPU with '
            '--device cpu.'.format(type(e).__name__, e)) from None
    if count < 1:
        raise CommunicationError(
            'a GPU run (--device gpu or a GPU id) found no visible GPU '
            '(CUDA_VISIBLE_DEVICES={!r}). Ask the scheduler for GPUs, or run with '
            '--device cpu.'.format(os.environ.get('CUDA_VISIBLE_DEVICES')))


def create_multi_node_optimizer(actual_optimizer, comm, model):
    """Wrap `actual_optimizer` for data-parallel training and set it up.

    Broadcasts rank 0's parameters now. ChainerMN's wrapper otherwise spends
    its first ``update()`` call on that broadcast *instead of* an update
    (it compares the parameter list with the one it saw last, initially
    empty), so the first iteration of every launch, including each resumed
    one, would silently be skipped and a resumed run would differ from an
    uninterrupted one. Recording the parameter list here avoids that; the
    model's parameters must be initialised (no lazily-sized links).
    """
    import chainermn
    optimizer = chainermn.create_multi_node_optimizer(actual_optimizer, comm)
    optimizer.setup(model)
    uninitialised = [name for name, p in model.namedparams() if p.array is None]
    if uninitialised:
        raise CommunicationError(
            'parameters {} are not initialised; give every link its input '
            'size so that all ranks can start from the same weights'.format(
                ', '.join(uninitialised[:5])))
    comm.bcast_data(model)
    optimizer.is_changed(model)   # records the parameter list (see above)
    return optimizer


FP16_MAX = 65504.0


def fp16_allreduce_mean(per_rank, prescale=False):
    """NumPy model of ChainerMN's ``pure_nccl`` fp16 gradient mean.

    `per_rank` is an array (W, N): each row one rank's fp32 gradients. What
    ``pure_nccl`` with ``allreduce_grad_dtype=float16`` does on the GPU:
    cast each rank's gradients to fp16, sum them with NCCL in fp16 (a ring
    adds one rank's contribution at a time, rounding to fp16 after each
    addition), multiply by 1/W in fp16, cast back to fp32.

    ``prescale=True`` models the variant that multiplies by 1/W *before*
    the cast: the sum can no longer overflow, but small gradients fall into
    fp16's subnormal range (below 6.1e-5) and lose precision, and below
    3e-8 they vanish. Training uses ChainerMN's sum-then-scale (the paper's
    setting); benchmarks/README.md records the ResNet-50 gradient magnitudes
    that make overflow a non-issue at 1,024 ranks.
    """
    import numpy
    per_rank = numpy.asarray(per_rank, dtype=numpy.float32)
    size = per_rank.shape[0]
    scale = numpy.float32(1.0 / size)
    with numpy.errstate(over='ignore'):
        if prescale:
            per_rank = per_rank * scale
        wire = per_rank.astype(numpy.float16)
        total = wire[0].copy()
        for row in wire[1:]:
            total = (total + row).astype(numpy.float16)
        if not prescale:
            total = (total.astype(numpy.float32) * scale).astype(numpy.float16)
    return total.astype(numpy.float32)


def fp16_sum_overflows(max_abs_grad, size):
    """Whether summing `size` ranks' gradients of magnitude up to
    `max_abs_grad` can exceed fp16's largest finite value (65,504)."""
    return max_abs_grad * size > FP16_MAX


def select_gpu(comm, visible_gpus=None, explicit=None):
    """GPU id for this rank, for the two bindings sites use; refuses what is ambiguous.

    - All of the node's GPUs visible to every rank (``mpirun``, or Slurm
      without per-task binding): the GPU of the rank's node-local rank,
      ``comm.intra_rank``.
    - One GPU visible per rank (``srun --gpus-per-task=1``, ``--gpu-bind``,
      per-task cgroups): device 0, the rank's own GPU. (Several ranks that
      see the *same* single GPU look alike from inside: :func:`bind_gpu`
      compares PCI bus ids over all ranks, and so does the doctor.)
    - ``explicit`` (``--device N``) is honoured only with one rank on the
      node: with several, every rank would take GPU N.

    Raises CommunicationError when a node runs more ranks than it has visible
    GPUs (CUDA would otherwise fail later with "invalid device ordinal"), or
    for an explicit id with several ranks per node or out of range.
    """
    if visible_gpus is None:
        import cupy
        visible_gpus = cupy.cuda.runtime.getDeviceCount()
    intra_size = getattr(comm, 'intra_size', None)
    where = 'rank {} is local rank {} on host {}'.format(
        comm.rank, comm.intra_rank, os.uname().nodename)
    if explicit is not None:
        if intra_size is not None and intra_size > 1:
            raise CommunicationError(
                '--device {} with {} ranks on host {}: every rank would use GPU {}. Use '
                '--device gpu (each rank takes the GPU of its node-local rank).'.format(
                    explicit, intra_size, os.uname().nodename, explicit))
        if not 0 <= explicit < visible_gpus:
            raise CommunicationError(
                '--device {}: {} but only {} GPU(s) are visible (CUDA_VISIBLE_DEVICES={!r}).'
                .format(explicit, where, visible_gpus, os.environ.get('CUDA_VISIBLE_DEVICES')))
        return explicit
    if visible_gpus == 1:
        return 0
    if comm.intra_rank >= visible_gpus:
        raise CommunicationError(
            '{} but only {} GPU(s) are visible (CUDA_VISIBLE_DEVICES={!r}). Start at most '
            '{} rank(s) per node, e.g. mpiexec --map-by ppr:{}:node, or #SBATCH '
            '--ntasks-per-node={}; or bind one GPU per rank (srun --gpus-per-task=1).'
            .format(where, visible_gpus, os.environ.get('CUDA_VISIBLE_DEVICES'),
                    visible_gpus, visible_gpus, visible_gpus))
    return comm.intra_rank


def device(name, comm):
    """The Chainer device of this rank: ``'cpu'``, ``'gpu'`` (the GPU of the
    node-local rank, :func:`bind_gpu`) or a GPU id (``--device``)."""
    import chainer
    if name == 'cpu':
        return chainer.get_device('@numpy')
    gpu_id = bind_gpu(comm, explicit=None if name == 'gpu' else int(name))
    return chainer.get_device('@cupy:{}'.format(gpu_id))


def bind_gpu(comm, explicit=None):
    """Select this rank's GPU (:func:`select_gpu`), make it current, and check that no
    other rank of the node took the same one; returns its id. Collective.

    Several ranks that each see one GPU all take device 0 (``select_gpu``
    cannot tell from inside whether it is the same GPU); if it is, NCCL later
    refuses them with a cryptic "invalid usage". The ranks compare PCI bus ids
    in one allgather instead, and all raise the same CommunicationError (with
    ``collective_rank``, so the trainer says it once).
    """
    import cupy
    gpu = select_gpu(comm, explicit=explicit)
    cupy.cuda.Device(gpu).use()
    check_distinct_gpus(comm, gpu, gpu_bus_id(gpu))
    return gpu


def gpu_bus_id(gpu):
    """The PCI bus id of CUDA device `gpu` ('0000:3b:00', domain:bus:device)."""
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(gpu)
    return '{:04x}:{:02x}:{:02x}'.format(props.get('pciDomainID', 0),
                                        props.get('pciBusID', 0),
                                        props.get('pciDeviceID', 0))


def check_distinct_gpus(comm, gpu, bus_id):
    """Raise CommunicationError on every rank if two ranks of one host use one GPU.

    One ``allgather`` of (host, bus id, CUDA device id) over ``comm.mpi_comm``:
    every rank judges the same table, so all raise or none does.
    """
    table = comm.mpi_comm.allgather((os.uname().nodename, bus_id, gpu))
    seen = {}
    for rank, (host, bus, device) in enumerate(table):
        if (host, bus) in seen:
            first = seen[host, bus]
            error = CommunicationError(
                'ranks {} and {} on host {} both use the GPU at PCI bus {} (their CUDA '
                'devices {} and {}; CUDA_VISIBLE_DEVICES={!r} on rank {}): NCCL cannot run '
                'two ranks on one GPU. Give every rank a GPU of its own: as many ranks per '
                'node as GPUs with all GPUs visible to each (the trainer takes the node-local '
                'rank\'s), or one distinct GPU per rank (srun --gpus-per-task=1, '
                '--gpu-bind).'.format(first, rank, host, bus, table[first][2], device,
                                       os.environ.get('CUDA_VISIBLE_DEVICES'), comm.rank))
            error.collective_rank = comm.rank
            raise error
        seen[host, bus] = rank


def from_rank0(comm, fn, *args, errors=(), **kwargs):
    """``fn(*args, **kwargs)``, computed on rank 0 and returned on every rank.

    For what every rank needs and one rank can compute: at start-up, the
    dataset index (the list file read, or the class folders walked, once per
    job instead of once per rank: field-notes.md, "What grows with the
    number of ranks"). The result goes to the other ranks in ONE
    ``comm.mpi_comm.bcast``, which pickles it: ImageNet's training index
    (1.28 M paths and labels) is 50-100 MB of pickle, about 1 s to pickle
    and unpickle on one core (benchmarks/README.md, "Start-up and resume
    at scale").

    If ``fn`` raises a user error (:class:`~chainer_resnet.data.layouts.DatasetError`,
    :class:`~chainer_resnet.recipes.RecipeError`, :class:`CommunicationError`,
    or a type in ``errors``), the exception is broadcast instead of a
    result and every rank raises it: all ranks end with the same message,
    none waits for a result that will not come. The raised exception carries
    ``collective_rank`` (this rank), so a caller can report it on rank 0 only.
    Rank 0 raises the original (with its traceback); an exception that does
    not pickle travels as its user-error base class with the same message. Any other exception
    propagates on rank 0 alone, while the other ranks wait in the
    broadcast: :func:`install_abort_on_error` must be in effect to end them.

    Args:
        comm: a ChainerMN communicator (``rank``, ``mpi_comm``).
        fn (callable): called on rank 0 only.
        errors (tuple of exception types): more user-error types.
        *args, **kwargs: passed to ``fn``.

    Returns:
        ``fn``'s result, on every rank (a copy on the ranks other than 0).
    """
    from chainer_resnet.data.layouts import DatasetError
    from chainer_resnet.recipes import RecipeError
    user_errors = (DatasetError, RecipeError, CommunicationError) + tuple(errors)
    payload = failure = None
    if comm.rank == 0:
        try:
            payload = (True, fn(*args, **kwargs))
        except user_errors as e:
            failure = e
            payload = (False, _picklable(e, user_errors))
    ok, value = comm.mpi_comm.bcast(payload, root=0)
    if ok:
        return value
    error = failure if failure is not None else value
    # The same error is raised on every rank; this lets the trainer print it once.
    error.collective_rank = comm.rank
    raise error


def _picklable(error, user_errors):
    """`error`, or its first user-error base with the same message if it does not pickle."""
    import pickle
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        base = next(t for t in user_errors if isinstance(error, t))
        return base(str(error))


def print0(comm, *args, **kwargs):
    """print() on rank 0 only, flushed."""
    if comm.rank == 0:
        kwargs.setdefault('flush', True)
        print(*args, **kwargs)


def warn0(comm, message):
    if comm.rank == 0:
        print('WARNING: ' + message, file=sys.stderr, flush=True)
