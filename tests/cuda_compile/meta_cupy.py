"""A NumPy-backed stand-in for CuPy that records every kernel the code asks it to launch.

Installed in ``sys.modules`` as ``cupy`` (and ``cupy.cuda``, ``cupyx``, ...)
*before* Chainer is imported, it makes Chainer believe a GPU is there, so that
Chainer, ChainerMN and chainer_resnet take their GPU code paths (``forward_gpu``,
``update_core_gpu``, ``pure_nccl``) on a machine without one. Array routines
(``cupy.empty``, ``x.sum()``, ``x + y``, ``cupy.tensordot``) run in NumPy on the
host; the three kinds of user kernel, ``ElementwiseKernel``, ``ReductionKernel``
and ``RawKernel``, are not run: each launch is *recorded* with the kernel's
definition (the exact arguments the code constructed it with) and the type,
shape and strides of every argument, and gives zero-filled outputs of the
shape and dtype CuPy would allocate.

Those records are what :mod:`compile_kernels` turns into CUDA source with
CuPy's own code generator and compiles with NVRTC, on the CuPy wheels users
install. Device memory is host memory with real addresses, so ChainerMN's
buffers (``cupy.cuda.alloc``, ``MemoryPointer`` arithmetic, arrays over a
pointer) behave as on a GPU; NCCL is a one-rank NCCL that copies.

What it cannot see: kernels that CuPy itself builds for its own routines
(ufuncs, reductions such as ``sum``, ``astype`` copies, cuBLAS/CUB calls), and
anything a real GPU would compute differently: outputs of recorded kernels are
zeros, so values after one are not meaningful. Code that needs an API this
stand-in lacks fails loudly (AttributeError naming it), never silently.
"""

import ctypes
import json
import sys
import types

import numpy

RECORDS = []
_SEEN = set()

# NCCL data type ids (nccl.h), as CuPy's nccl module exposes them.
NCCL_TYPES = {'int8': 0, 'uint8': 1, 'int32': 2, 'uint32': 3, 'int64': 4,
              'uint64': 5, 'float16': 6, 'float32': 7, 'float64': 8}


def _caller():
    """'module:function' of the first frame outside this file (who launched)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    if frame is None:
        return '?'
    return '{}:{}'.format(frame.f_globals.get('__name__', '?'), frame.f_code.co_name)


def _record(entry):
    key = json.dumps(entry, sort_keys=True)
    if key not in _SEEN:
        _SEEN.add(key)
        RECORDS.append(dict(entry, caller=_caller()))


# ---------------------------------------------------------------- memory

class MemoryPointer:
    """A pointer into host memory that stands for device memory."""

    def __init__(self, mem, offset):
        self.mem = mem          # a NumPy uint8 array owning the bytes
        self.offset = offset
        self.device_id = 0

    @property
    def ptr(self):
        return self.mem.ctypes.data + self.offset

    def __add__(self, offset):
        return MemoryPointer(self.mem, self.offset + offset)

    def __int__(self):
        return self.ptr

    def copy_from_device(self, src, size):
        ctypes.memmove(self.ptr, src.ptr, size)

    copy_from_device_async = lambda self, src, size, stream=None: (  # noqa: E731
        self.copy_from_device(src, size))

    def copy_to_host(self, dst, size):
        ctypes.memmove(dst, self.ptr, size)

    def copy_from_host(self, src, size):
        ctypes.memmove(self.ptr, src, size)

    def memset(self, value, size):
        ctypes.memset(self.ptr, value, size)


def alloc(size):
    """``cupy.cuda.alloc``: zeroed bytes on the 'device'."""
    return MemoryPointer(numpy.zeros(max(int(size), 1), numpy.uint8), 0)


# ---------------------------------------------------------------- arrays

def _unwrap(x):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    return x


def _wrap(x):
    if isinstance(x, numpy.ndarray) and not isinstance(x, numpy.matrix):
        return ndarray._from_numpy(x)
    if isinstance(x, numpy.generic):
        return ndarray._from_numpy(numpy.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _wrapped(fn):
    def call(*args, **kwargs):
        args = _unwrap(args)
        kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
        return _wrap(fn(*args, **kwargs))
    call.__name__ = getattr(fn, '__name__', 'routine')
    return call


class _Flags:
    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = a.flags.owndata

    def __getitem__(self, name):
        return {'C_CONTIGUOUS': self.c_contiguous, 'F_CONTIGUOUS': self.f_contiguous,
                'OWNDATA': self.owndata}[name]


class ndarray(numpy.lib.mixins.NDArrayOperatorsMixin):
    """``cupy.ndarray`` over a NumPy array; not a NumPy array (as CuPy's is not)."""

    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order='C'):
        dtype = numpy.dtype(dtype)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if memptr is None:
            self._a = numpy.zeros(shape, dtype, order=order)
            return
        nbytes = int(numpy.prod(shape)) * dtype.itemsize
        raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(memptr.ptr)
        flat = numpy.frombuffer(raw, numpy.uint8, count=nbytes)
        a = flat.view(dtype).reshape(shape)
        if strides is not None:
            a = numpy.lib.stride_tricks.as_strided(a, shape, strides)
        self._a = a
        self._owner = memptr    # keeps the bytes alive

    @classmethod
    def _from_numpy(cls, a):
        self = cls.__new__(cls)
        self._a = a
        return self

    # what CuPy refuses: silent host transfers
    def __array__(self, *args, **kwargs):
        raise TypeError('Implicit conversion to a NumPy array is not allowed '
                        '(meta-CuPy, as CuPy). Use .get() explicitly.')

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get('out')
        # CuPy promotes a 0-dim array as an array, NumPy 1 by its value (a
        # float32 0-dim array and 1.0 give float32 in CuPy, float64 in NumPy):
        # computed as 1-element arrays, the dtypes are CuPy's.
        scalar_shaped = method == '__call__' and all(
            x.ndim == 0 for x in inputs if isinstance(x, ndarray))
        inputs = tuple(x._a.reshape(1) if isinstance(x, ndarray) and x.ndim == 0 else
                       _unwrap(x) for x in inputs)
        if out is not None:
            kwargs['out'] = tuple(o._a.reshape(1) if o.ndim == 0 else o._a for o in out)
        result = getattr(ufunc, method)(*inputs, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        if scalar_shaped:
            result = (tuple(r.reshape(()) for r in result) if isinstance(result, tuple)
                      else result.reshape(()))
        return _wrap(result)

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: _Flags(self._a))
    T = property(lambda self: _wrap(self._a.T))
    device = property(lambda self: Device(0))

    @shape.setter
    def shape(self, value):
        self._a.shape = value

    @property
    def data(self):
        base = self._a
        while isinstance(base.base, numpy.ndarray):
            base = base.base
        raw = base.view(numpy.uint8).reshape(-1) if base.flags.c_contiguous else None
        if raw is None:
            raise NotImplementedError('meta-CuPy: .data of a non-contiguous base array')
        return MemoryPointer(raw, self._a.ctypes.data - base.ctypes.data)

    def get(self, stream=None, order='C', out=None, blocking=True):
        if out is not None:
            out[...] = self._a
            return out
        return numpy.array(self._a, order=order)

    def set(self, arr, stream=None):
        self._a[...] = arr

    def reduced_view(self, dtype=None):
        return self

    def __getattr__(self, name):
        if name.startswith('__'):
            # NumPy's protocols (__array_interface__, ...) would copy to the host
            # silently, which CuPy refuses.
            raise AttributeError(name)
        attr = getattr(self._a, name)
        return _wrapped(attr) if callable(attr) else _wrap(attr)

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key, value):
        self._a[_unwrap(key)] = _unwrap(value)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(v) for v in self._a)

    def __bool__(self):
        return bool(self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return int(self._a)

    def __repr__(self):
        return 'meta_cupy.' + repr(self._a)

    def __reduce__(self):
        raise TypeError('meta-CuPy arrays are not picklable; use .get()')


def asarray(a, dtype=None, order=None, blocking=False):
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    return _wrap(numpy.array(a, dtype=dtype, order=order or 'K'))


def array(obj, dtype=None, copy=True, order='K', subok=False, ndmin=0, blocking=False):
    return _wrap(numpy.array(_unwrap(obj), dtype=dtype, copy=True, order=order,
                             ndmin=ndmin))


def asnumpy(a, stream=None, order='C', out=None, blocking=True):
    return a.get(order=order, out=out) if isinstance(a, ndarray) else numpy.asarray(a)


def get_array_module(*args):
    return sys.modules['cupy'] if any(isinstance(a, ndarray) for a in args) else numpy


# ---------------------------------------------------------------- kernels

def _describe(arg):
    """What CuPy's code generator needs to know of one launch argument."""
    if isinstance(arg, ndarray):
        return {'kind': 'ndarray', 'dtype': arg.dtype.name, 'shape': list(arg.shape),
                'strides': list(arg.strides)}
    if isinstance(arg, MemoryPointer):
        return {'kind': 'pointer'}
    if isinstance(arg, numpy.generic):
        return {'kind': 'scalar', 'dtype': arg.dtype.name}
    if isinstance(arg, (bool, int, float, complex)):
        return {'kind': 'scalar', 'dtype': type(arg).__name__}
    raise TypeError('meta-CuPy: kernel argument of type {} is not supported'.format(
        type(arg).__name__))


def parse_params(text):
    """[(raw, type, name)] of a CuPy parameter list such as 'raw T x, int32 n'."""
    params = []
    for item in text.split(','):
        words = item.split()
        if not words:
            continue
        raw = words[0] == 'raw'
        if raw:
            words = words[1:]
        if len(words) != 2:
            raise ValueError('meta-CuPy: cannot parse parameter {!r}'.format(item))
        params.append((raw, words[0], words[1]))
    return params


def _is_dtype_name(name):
    try:
        numpy.dtype(name)
    except TypeError:
        return False
    return len(name) > 1     # one-letter names are type placeholders ('T'), not 'b'


def _bind_types(out_params, outs, in_params, in_args):
    """Type placeholder -> dtype from the array arguments, outputs first (CuPy's rule)."""
    bound = {}
    for params, args in ((out_params, outs), (in_params, in_args)):
        for (raw, ctype, name), arg in zip(params, args):
            if isinstance(arg, ndarray) and not _is_dtype_name(ctype):
                bound.setdefault(ctype, arg.dtype)
    return bound


def _out_dtype(ctype, bound):
    return numpy.dtype(ctype) if _is_dtype_name(ctype) else bound[ctype]


class ElementwiseKernel:
    """Records its launches; outputs are zero-filled arrays of CuPy's shape and dtype."""

    def __init__(self, in_params, out_params, operation, name='kernel', reduce_dims=True,
                 preamble='', no_return=False, return_tuple=False, **kwargs):
        self.definition = {'in_params': in_params, 'out_params': out_params,
                           'operation': operation, 'name': name,
                           'reduce_dims': reduce_dims, 'preamble': preamble,
                           'kwargs': {k: list(v) if isinstance(v, tuple) else v
                                      for k, v in kwargs.items()}}
        self.in_params = parse_params(in_params)
        self.out_params = parse_params(out_params)
        self.no_return, self.return_tuple = no_return, return_tuple
        self.name = name

    def __call__(self, *args, size=-1, stream=None, block_size=128):
        nin = len(self.in_params)
        if len(args) not in (nin, nin + len(self.out_params)):
            raise TypeError('Wrong number of arguments for {!r}'.format(self.name))
        in_args, outs = list(args[:nin]), list(args[nin:])
        given = bool(outs)
        bound = _bind_types(self.out_params, outs, self.in_params, in_args)
        if not outs:
            arrays = [a._a for (raw, _, _), a in zip(self.in_params, in_args)
                      if isinstance(a, ndarray) and not raw]
            shape = (numpy.broadcast_shapes(*[a.shape for a in arrays]) if arrays
                     else (size,))
            outs = [ndarray(shape, _out_dtype(ctype, bound))
                    for raw, ctype, name in self.out_params]
        _record({'kind': 'elementwise', 'definition': self.definition,
                 'args': [_describe(a) for a in in_args + outs], 'size': size,
                 'outputs_given': given})
        if self.no_return:
            return None
        if len(outs) == 1 and not self.return_tuple:
            return outs[0]
        return tuple(outs)


class ReductionKernel:
    """Records its launches; the output is a zero-filled array of the reduced shape."""

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr,
                 identity, name='reduce_kernel', reduce_type=None, reduce_dims=True,
                 preamble='', options=()):
        self.definition = {'in_params': in_params, 'out_params': out_params,
                           'map_expr': map_expr, 'reduce_expr': reduce_expr,
                           'post_map_expr': post_map_expr,
                           'identity': None if identity is None else str(identity),
                           'name': name, 'reduce_type': reduce_type,
                           'reduce_dims': reduce_dims, 'preamble': preamble,
                           'options': list(options)}
        self.in_params = parse_params(in_params)
        self.out_params = parse_params(out_params)
        self.name = name

    def __call__(self, *args, out=None, axis=None, keepdims=False, stream=None):
        nin = len(self.in_params)
        in_args, outs = list(args[:nin]), list(args[nin:])
        if out is not None:
            outs = [out]
        given = bool(outs)
        arrays = [a._a for (raw, _, _), a in zip(self.in_params, in_args)
                  if isinstance(a, ndarray) and not raw]
        shape = numpy.broadcast_shapes(*[a.shape for a in arrays])
        if not outs:
            bound = _bind_types((), (), self.in_params, in_args)
            reduced = numpy.zeros(shape, numpy.int8).sum(axis=axis, keepdims=keepdims)
            outs = [ndarray(numpy.shape(reduced), _out_dtype(ctype, bound))
                    for raw, ctype, name in self.out_params]
        _record({'kind': 'reduction', 'definition': self.definition,
                 'args': [_describe(a) for a in in_args + outs],
                 'broadcast_shape': list(shape),
                 'axis': list(axis) if isinstance(axis, tuple) else axis,
                 'keepdims': keepdims, 'outputs_given': given})
        return outs[0]


class RawKernel:
    """Records its launches (the source is compiled as given, as CuPy does)."""

    def __init__(self, code, name, options=(), backend='nvrtc', translate_cucomplex=False,
                 enable_cooperative_groups=False, jitify=False):
        self.definition = {'code': code, 'name': name, 'options': list(options),
                           'backend': backend, 'translate_cucomplex': translate_cucomplex,
                           'enable_cooperative_groups': enable_cooperative_groups,
                           'jitify': jitify}

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        _record({'kind': 'raw', 'definition': self.definition,
                 'args': [_describe(a) if not isinstance(a, int) else
                          {'kind': 'scalar', 'dtype': 'int'} for a in args]})


def memoize(for_each_device=False):
    def decorator(f):
        memo = {}

        def call(*args, **kwargs):
            key = (args, tuple(sorted(kwargs.items())))
            if key not in memo:
                memo[key] = f(*args, **kwargs)
            return memo[key]
        call.__name__ = f.__name__
        call.__wrapped__ = f
        return call
    return decorator


def _unsupported(name):
    def fail(*args, **kwargs):
        raise NotImplementedError(
            'meta-CuPy does not model {} (its kernels could not be recorded)'.format(name))
    return fail


# ---------------------------------------------------------------- cupy.cuda

class Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        if self.id != 0:
            raise ValueError('meta-CuPy has one device, 0; asked for {}'.format(device))
        self.compute_capability = '90'

    def use(self):
        pass

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(('meta-cupy-device', self.id))

    def __int__(self):
        return self.id

    def __repr__(self):
        return '<CUDA Device {}>'.format(self.id)


class Stream:
    null = None

    def __init__(self, null=False, non_blocking=False, ptr=0):
        self.ptr = 0

    def synchronize(self):
        pass

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


Stream.null = Stream(null=True)


class Event:
    def record(self, stream=None):
        pass

    def synchronize(self):
        pass


class _MemoryPool:
    def free_all_blocks(self, stream=None):
        pass

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def malloc(self, size):
        return alloc(size)


def _nccl_module():
    """A one-rank NCCL: allReduce copies, bcast does nothing."""
    nccl = types.ModuleType('cupy.cuda.nccl')
    nccl.available = True
    nccl.NCCL_SUM = 0
    for name, value in NCCL_TYPES.items():
        setattr(nccl, 'NCCL_' + name.upper(), value)
    nccl.NCCL_FLOAT = nccl.NCCL_FLOAT32
    nccl.NCCL_HALF = nccl.NCCL_FLOAT16
    sizes = {v: numpy.dtype(k).itemsize for k, v in NCCL_TYPES.items()}

    class NcclError(RuntimeError):
        pass

    class NcclCommunicator:
        def __init__(self, ndev, commId, rank):
            if ndev != 1:
                raise NcclError('meta-CuPy NCCL runs one rank, not {}'.format(ndev))

        def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
            if sendbuf != recvbuf:
                ctypes.memmove(recvbuf, sendbuf, count * sizes[datatype])

        def bcast(self, buff, count, datatype, root, stream):
            pass

        def destroy(self):
            pass

    nccl.NcclError = NcclError
    nccl.NcclCommunicator = NcclCommunicator
    nccl.get_build_version = lambda: 22501
    nccl.get_version = lambda: 22501
    nccl.get_unique_id = lambda: (0,) * 128
    return nccl


def install():
    """Put meta-CuPy in sys.modules as cupy, cupy.cuda, cupyx, ...; before Chainer."""
    if 'chainer' in sys.modules:
        raise RuntimeError('meta-CuPy must be installed before chainer is imported')
    me = sys.modules[__name__]
    cupy = types.ModuleType('cupy')
    cupy.__version__ = '13.6.0'
    cupy.__path__ = []          # a package, so that `import cupy.cuda` works
    for name in ('ndarray', 'asarray', 'array', 'asnumpy', 'get_array_module',
                 'ElementwiseKernel', 'ReductionKernel', 'RawKernel', 'memoize'):
        setattr(cupy, name, getattr(me, name))
    cupy.clear_memo = lambda: None
    # Zeros, not garbage: recorded kernels do not fill the arrays they are given.
    cupy.empty = _wrapped(numpy.zeros)
    cupy.empty_like = _wrapped(numpy.zeros_like)
    # Applied at import by Chainer's LSTM; calling a fused function fails.
    cupy.fuse = lambda *args, **kwargs: lambda f: _unsupported('cupy.fuse of ' + f.__name__)
    cupy.RawModule = _unsupported('cupy.RawModule')
    pool = _MemoryPool()
    cupy.get_default_memory_pool = lambda: pool
    cupy.get_default_pinned_memory_pool = lambda: pool

    def routine(name):
        value = getattr(numpy, name)    # AttributeError names what is missing
        if callable(value) and not isinstance(value, type):
            return _wrapped(value)
        return value
    cupy.__getattr__ = routine

    cuda = types.ModuleType('cupy.cuda')
    cuda.__path__ = []
    cuda.Device, cuda.Stream, cuda.Event = Device, Stream, Event
    cuda.MemoryPointer, cuda.alloc = MemoryPointer, alloc
    cuda.get_current_stream = lambda device_id=-1: Stream.null
    cuda.set_allocator = lambda allocator=None: None
    cuda.alloc_pinned_memory = _unsupported('cupy.cuda.alloc_pinned_memory')
    runtime = types.ModuleType('cupy.cuda.runtime')
    runtime.getDeviceCount = lambda: 1
    runtime.getDevice = lambda: 0
    runtime.runtimeGetVersion = lambda: 12090
    runtime.driverGetVersion = lambda: 12090
    runtime.deviceSynchronize = lambda: None
    runtime.is_hip = False
    runtime.getDeviceProperties = lambda device: {
        'name': b'meta-CuPy device', 'pciDomainID': 0, 'pciBusID': 0, 'pciDeviceID': 0,
        'major': 9, 'minor': 0, 'totalGlobalMem': 80 * 2 ** 30}
    memory = types.ModuleType('cupy.cuda.memory')
    memory.MemoryPointer, memory.alloc = MemoryPointer, alloc
    cuda.runtime, cuda.memory = runtime, memory
    cuda.cublas = types.ModuleType('cupy.cuda.cublas')
    cuda.nccl = _nccl_module()
    cupy.cuda = cuda

    util = types.ModuleType('cupy._util')

    class PerformanceWarning(RuntimeWarning):
        pass
    util.PerformanceWarning = PerformanceWarning
    util.memoize = memoize

    cupyx = types.ModuleType('cupyx')
    cupyx.__path__ = []
    scipy = types.ModuleType('cupyx.scipy')
    scipy.__path__ = []
    scipy.linalg = types.ModuleType('cupyx.scipy.linalg')
    scipy.special = types.ModuleType('cupyx.scipy.special')
    cupyx.scipy = scipy
    # CuPy's own ufunc (its kernel is CuPy's, not recorded).
    cupyx.rsqrt = _wrapped(lambda x, out=None, dtype=None: numpy.divide(
        1, numpy.sqrt(x, dtype=dtype), out=out, dtype=dtype))
    cupy._util = util
    sys.modules.update({
        'cupy': cupy, 'cupy.cuda': cuda, 'cupy.cuda.runtime': runtime,
        'cupy.cuda.memory': memory, 'cupy.cuda.cublas': cuda.cublas,
        'cupy.cuda.nccl': cuda.nccl, 'cupy._util': util, 'cupyx': cupyx,
        'cupyx.scipy': scipy, 'cupyx.scipy.linalg': scipy.linalg,
        'cupyx.scipy.special': scipy.special,
        # No cuDNN: Chainer takes its own kernels (im2col, pooling, BN).
        'cupy.cudnn': None, 'cupy.cuda.cudnn': None,
    })
    return cupy
