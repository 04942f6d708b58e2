"""Device arrays and memory of meta-CuPy (:mod:`meta_cupy`): NumPy on the host.

``ndarray`` wraps a NumPy array and is not one (as a CuPy array is not): NumPy's
ufuncs and the methods CuPy shares with NumPy compute on the host, with CuPy's
dtype rules where NumPy 1's differ (0-dim arrays), and an implicit host
transfer raises as in CuPy. Device memory is host memory with real addresses, so
pointer arithmetic, ``cupy.ndarray(shape, memptr=...)`` views and copies between
pointers behave as ChainerMN's buffers expect.
"""

import ctypes
import sys

import numpy


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
