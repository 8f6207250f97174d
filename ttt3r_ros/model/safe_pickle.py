"""A restricted unpickler for PyTorch checkpoints that never runs code from the file.

Why not plain ``pickle``: a ``.pth`` is a pickle, and a pickle is a program: its REDUCE/NEWOBJ/BUILD opcodes call
whatever global the file names (``os.system`` included). Why not ``torch.load(weights_only=True)``: it refuses the
OmegaConf objects the official CUT3R checkpoint stores under ``"args"``, so it cannot read that file at all.

Policy (enforced per opcode, on top of the pure-Python ``pickle._Unpickler`` so every object-creating opcode passes
through here):

* Tensors and storages: only through torch's tensor-rebuild functions, wrapped so their arguments are checked
  (storage object, integer sizes, no backward hooks) before torch sees them. Storage bytes come from torch's own
  ``persistent_load`` (we are plugged into ``torch.load`` as ``pickle_module``), whose storage records are checked
  first against the real sizes in the file (:func:`storage_limits`): a record claiming more bytes than the file holds
  is refused before torch allocates it.
* Tensor layouts are checked on integers only, before any element is read (:func:`tensor_layout_problem`): negative
  strides, overlapping or expanded (stride-0) views and views reaching past their storage become a
  :class:`RejectedTensor` placeholder, which the checkpoint reader reports under the tensor's key. (A 2 KB file can
  otherwise describe a 10^12-element "tensor" over one stored float, and any later comparison or ``.contiguous()``
  walks all of it.)
* Plain data: builtin containers and scalars, ``OrderedDict``, ``defaultdict`` (read as a plain dict), torch
  dtypes / devices / sizes, ``bytes`` via ``_codecs.encode`` (how protocol 2 stores bytes).
* Any other class (OmegaConf ``DictConfig``/``ListConfig``/nodes/metadata, ``typing.Any``, enums, numpy scalars,
  argparse namespaces, ...) is never imported: the global becomes a :class:`GlobalRef` placeholder and an instance
  becomes a :class:`PickledObject` that only records its constructor arguments, state and items.
  :func:`to_plain_data` turns those records into dicts/lists/scalars (OmegaConf containers into their content).
* Refused with :class:`UnsafePickleError` (naming the global): any global from a module that runs code (``os``,
  ``subprocess``, ``builtins`` beyond plain types, ``importlib``, ``torch`` beyond the rebuild functions, ...), and any
  call (REDUCE / INST / OBJ) of something that looks like a function rather than a class. Nothing is executed in
  either case; the refusal is there so a file that *tries* to run code is reported, not silently half-read.
"""
from __future__ import annotations

import _compat_pickle
import collections
import contextlib
import contextvars
import io
import math
import pickle
import types
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Sequence

import torch


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references or calls something a weights file has no reason to contain."""


# --------------------------------------------------------------------------------------------------------------------
# Placeholders for foreign objects (never imported, never executed)


class GlobalRef:
    """A global (class, function, constant) named by the pickle, kept as its dotted name only."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    @property
    def qualified_name(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"GlobalRef({self.qualified_name})"


class PickledObject:
    """An instance of a foreign class, as the pickle described it: nothing of the class's own code ran.

    ``args``/``kwargs``: constructor or ``__new__`` arguments; ``state``: what BUILD would have passed to
    ``__setstate__``; ``dict_items``/``list_items``/``set_items``: what SETITEMS/APPENDS/ADDITEMS added (dict, list or
    set subclasses); ``called``: True when the pickle *called* the class (REDUCE), False for ``__new__`` (NEWOBJ).
    """

    def __init__(self, cls: GlobalRef, args: tuple = (), kwargs: dict | None = None, called: bool = False) -> None:
        self.cls = cls
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.called = called
        self.state: Any = None
        self.dict_items: list[tuple[Any, Any]] = []
        self.list_items: list[Any] = []
        self.set_items: list[Any] = []

    # The unpickler fills subclass-of-dict/list/set contents through these (SETITEMS / APPENDS / ADDITEMS).
    def __setitem__(self, key: Any, value: Any) -> None:
        self.dict_items.append((key, value))

    def append(self, value: Any) -> None:
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)

    def add(self, value: Any) -> None:
        self.set_items.append(value)

    def __repr__(self) -> str:
        return f"PickledObject({self.cls.qualified_name})"


# --------------------------------------------------------------------------------------------------------------------
# What may be resolved to real objects


class _SafeCallable:
    """A callable the pickle may invoke (REDUCE), with its arguments checked by ``fn`` itself."""

    __slots__ = ("fn", "label")

    def __init__(self, fn: Callable[..., Any], label: str) -> None:
        self.fn = fn
        self.label = label

    def __repr__(self) -> str:
        return f"_SafeCallable({self.label})"


# --------------------------------------------------------------------------------------------------------------------
# Tensor layouts and storage sizes, checked on integers before any data is touched


class RejectedTensor:
    """Stands in for a tensor whose recorded layout is unusable (see :func:`tensor_layout_problem`).

    No tensor was made and no element read; the checkpoint reader turns it into an error naming the key.
    """

    __slots__ = ("reason", "shape", "dtype")

    def __init__(self, reason: str, shape: Sequence[int], dtype: torch.dtype | None) -> None:
        self.reason = reason
        self.shape = tuple(shape)
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"RejectedTensor({list(self.shape)}, {self.dtype}: {self.reason})"


def tensor_layout_problem(shape: Sequence[int], stride: Sequence[int], storage_offset: int,
                          storage_elements: int) -> str | None:
    """Why a view (shape, stride, offset, in elements) over a storage of ``storage_elements`` is unusable, or None.

    Refused: negative sizes/strides/offsets; two indices reaching one element (stride 0 on a dimension longer than
    one, as ``expand`` makes, or strides that interleave); a last element beyond the storage. A usable view therefore
    never has more elements than its storage really holds, so reading it costs at most the file's own bytes.
    Pure integer arithmetic (Python ints: no overflow), O(ndim log ndim).
    """
    if len(shape) != len(stride):
        return f"{len(shape)} sizes but {len(stride)} strides"
    if any(type(v) is not int for v in (*shape, *stride, storage_offset)):
        return "non-integer size, stride or offset"
    if any(size < 0 for size in shape):
        return f"negative size in shape {list(shape)}"
    if storage_offset < 0:
        return f"negative storage offset {storage_offset}"
    if any(step < 0 for step in stride):
        return f"negative stride {list(stride)}"
    if any(size == 0 for size in shape):
        return None  # no element: nothing to read
    # Walk the dimensions from the finest stride up: each stride must step past everything the finer ones reach,
    # else two indices share an element.
    reach = 0  # furthest element offset reachable with the dimensions seen so far
    for step, size in sorted((st, sz) for st, sz in zip(stride, shape) if sz > 1):
        if step <= reach:
            what = "stride 0 (an expanded view" if step == 0 else f"stride {step} (an overlapping view"
            return (f"{what}: shape {list(shape)}, strides {list(stride)} make {math.prod(shape):,} elements out "
                    f"of a storage of {storage_elements:,})")
        reach += step * (size - 1)
    needed = storage_offset + reach + 1
    if needed > storage_elements:
        return (f"shape {list(shape)}, strides {list(stride)} and offset {storage_offset} need {needed:,} elements "
                f"but its storage holds {storage_elements:,} (truncated or forged storage)")
    return None


@dataclass(frozen=True)
class StorageLimits:
    """What the file really holds, for checking torch's storage records before torch allocates them.

    ``record_bytes``: size of each zip record (``"data/<key>"`` -> bytes) of a zip checkpoint, None for the legacy
    format; ``file_bytes``: size of the whole file (no legacy storage can be larger).
    """

    file_bytes: int
    record_bytes: Mapping[str, int] | None = None


_STORAGE_LIMITS: contextvars.ContextVar[StorageLimits | None] = contextvars.ContextVar("storage_limits", default=None)


@contextlib.contextmanager
def storage_limits(limits: StorageLimits) -> Iterator[None]:
    """Check every storage record unpickled inside this block against ``limits`` (see :class:`StorageLimits`)."""
    token = _STORAGE_LIMITS.set(limits)
    try:
        yield
    finally:
        _STORAGE_LIMITS.reset(token)


def _check_storage_record(saved_id: Any) -> None:
    """Refuse a storage record claiming more bytes than the file can hold (torch would allocate or map them)."""
    _require(isinstance(saved_id, tuple) and len(saved_id) >= 5, "bad storage record")
    typename = saved_id[0].decode("ascii") if isinstance(saved_id[0], bytes) else saved_id[0]
    _require(typename == "storage", f"unexpected persistent record {typename!r}")
    storage_type, key, numel = saved_id[1], saved_id[2], saved_id[4]
    _require(type(numel) is int and numel >= 0, "storage size must be a non-negative integer")
    dtype = torch.uint8 if storage_type is torch.UntypedStorage else getattr(storage_type, "dtype", None)
    _require(isinstance(dtype, torch.dtype), "bad storage type")
    claimed = numel * torch._utils._element_size(dtype)
    limits = _STORAGE_LIMITS.get()
    if limits is None:
        return
    key_name = key.decode("ascii", "replace") if isinstance(key, bytes) else str(key)
    if limits.record_bytes is not None:  # zip: each storage is its own record, written at exactly its size
        available = limits.record_bytes.get(f"data/{key_name}")
        _require(available is not None, f"storage record data/{key_name} is not in the archive")
        _require(claimed <= available, f"storage data/{key_name} claims {claimed:,} bytes but the archive holds "
                                       f"{available:,} (truncated or forged storage)")
    else:
        _require(claimed <= limits.file_bytes, f"storage {key_name} claims {claimed:,} bytes, more than the whole "
                                               f"file ({limits.file_bytes:,} bytes): truncated or forged storage")


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise UnsafePickleError(f"malformed tensor record in checkpoint: {what}")


def _is_int_sequence(value: Any) -> bool:
    return isinstance(value, (tuple, list, torch.Size)) and all(type(v) is int for v in value)


def _check_storage(storage: Any) -> None:
    # torch's persistent_load hands rebuild functions a TypedStorage (dtype + bytes read from the archive).
    _require(isinstance(storage, torch.storage.TypedStorage), f"expected a storage, got {type(storage).__name__}")


def _check_no_hooks(backward_hooks: Any) -> None:
    # torch.save never writes hooks (they are code); a non-empty hooks dict is either corrupt or hostile.
    _require(isinstance(backward_hooks, dict) and len(backward_hooks) == 0, "backward hooks are not allowed")


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> torch.Tensor | RejectedTensor:
    _check_storage(storage)
    _require(type(storage_offset) is int and storage_offset >= 0, "bad storage offset")
    _require(_is_int_sequence(size) and _is_int_sequence(stride) and len(size) == len(stride), "bad size/stride")
    # Checked here on integers (the storage's real size, after torch mapped it), before a tensor exists; the key is
    # not known yet, so the problem travels as a placeholder to the checkpoint reader.
    problem = tensor_layout_problem(tuple(size), tuple(stride), storage_offset, storage._size())
    if problem is not None:
        return RejectedTensor(problem, tuple(size), storage.dtype)
    return torch._utils._rebuild_tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, metadata: Any = None) -> torch.Tensor:
    _check_no_hooks(backward_hooks)
    _require(type(requires_grad) is bool, "requires_grad must be a bool")
    _require(metadata is None or (isinstance(metadata, dict) and all(
        type(k) is str and type(v) is bool for k, v in metadata.items())), "bad tensor metadata")
    tensor = _rebuild_tensor(storage, storage_offset, size, stride)
    if metadata and isinstance(tensor, torch.Tensor):
        torch._utils.set_tensor_metadata(tensor, metadata)
    return tensor  # requires_grad dropped on purpose: checkpoints are data


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) \
        -> torch.Tensor | RejectedTensor:
    _require(isinstance(data, (torch.Tensor, RejectedTensor)), "parameter data must be a tensor")
    _check_no_hooks(backward_hooks)
    _require(state is None or isinstance(state, (dict, tuple)), "bad parameter state")
    return data  # a plain tensor: extra Python attributes of a Parameter are not restored


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
    _require(isinstance(func, _SafeCallable), "tensor rebuild function is not an allowed one")
    _require(new_type is torch.Tensor or new_type is torch.nn.Parameter, "tensor subclasses are not supported")
    _require(isinstance(args, tuple), "bad rebuild arguments")
    _require(not state, "tensor Python state is not supported")
    return func.fn(*args)


def _make_size(dims: Any) -> torch.Size:
    _require(_is_int_sequence(dims), "torch.Size needs integers")
    return torch.Size(dims)


def _make_device(kind: Any, index: Any = None) -> torch.device:
    _require(type(kind) is str and (index is None or type(index) is int), "bad torch.device arguments")
    return torch.device(kind) if index is None else torch.device(kind, index)


def _codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    # Protocol 2 has no bytes opcode; Python 3 writes bytes as _codecs.encode(str, "latin1").
    _require(type(text) is str and encoding in ("latin1", "latin-1", "utf-8", "utf8") and errors == "strict",
             "unexpected _codecs.encode arguments")
    return text.encode(encoding)


def _defaultdict_as_dict(*args: Any) -> dict:
    # The default factory only matters for missing-key lookups, which plain data never does.
    return {}


def _plain_type_call(kind: type) -> _SafeCallable:
    """Calling a builtin type on plain arguments; sizes (bytes(10**12)) and foreign objects are refused."""

    def call(*args: Any) -> Any:
        for arg in args:
            _require(isinstance(arg, (str, bytes, bytearray, int, float, complex, bool, list, tuple, set, frozenset,
                                      dict, type(None))) and not isinstance(arg, PickledObject),
                     f"{kind.__name__}() called on {type(arg).__name__}")
        if kind in (bytes, bytearray):
            _require(all(not isinstance(a, int) for a in args), f"{kind.__name__}(int) is not allowed")
        if kind is range:
            _require(len(args) <= 3, "range arguments")
        return kind(*args)

    return _SafeCallable(call, f"builtins.{kind.__name__}")


def _reconstructor(cls: Any, base: Any, state: Any) -> PickledObject:
    # copyreg._reconstructor is how protocols 0/1 create instances; we only ever create a placeholder.
    _require(isinstance(cls, GlobalRef), "copyreg._reconstructor on a non-placeholder class")
    obj = PickledObject(cls, () if state is None else (state,))
    return obj


def _getattr_on_global(obj: Any, name: Any) -> GlobalRef:
    # Some enums pickle as getattr(EnumClass, "MEMBER"); on a placeholder this just extends the dotted name.
    _require(isinstance(obj, GlobalRef) and type(name) is str and not name.startswith("_"),
             "getattr on a real object is not allowed")
    return GlobalRef(obj.module, f"{obj.name}.{name}")


_PLAIN_BUILTIN_TYPES: dict[str, type] = {
    t.__name__: t for t in (dict, list, tuple, set, frozenset, str, bytes, bytearray, int, float, complex, bool,
                            slice, range, object)
}
_PLAIN_BUILTIN_TYPES["NoneType"] = type(None)
_PLAIN_BUILTIN_TYPES["long"] = int  # Python 2 name, if fix_imports did not apply

# Types that NEWOBJ may instantiate for real (their __new__ takes no data that could misbehave).
_NEWOBJ_TYPES = (dict, list, set, frozenset, tuple, collections.OrderedDict)

_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _SafeCallable(_rebuild_tensor, "torch._utils._rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"): _SafeCallable(_rebuild_tensor_v2, "torch._utils._rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"): _SafeCallable(_rebuild_parameter, "torch._utils._rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"): _SafeCallable(
        _rebuild_parameter, "torch._utils._rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"): _SafeCallable(_rebuild_from_type_v2, "torch._tensor._rebuild_from_type_v2"),
    ("torch._utils", "_rebuild_from_type_v2"): _SafeCallable(_rebuild_from_type_v2, "torch._utils._rebuild_from_type_v2"),
    ("torch", "Size"): _SafeCallable(_make_size, "torch.Size"),
    ("torch", "device"): _SafeCallable(_make_device, "torch.device"),
    ("torch", "Tensor"): torch.Tensor,
    ("torch._tensor", "Tensor"): torch.Tensor,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): _SafeCallable(_defaultdict_as_dict, "collections.defaultdict"),
    ("_codecs", "encode"): _SafeCallable(_codecs_encode, "_codecs.encode"),
    ("codecs", "encode"): _SafeCallable(_codecs_encode, "codecs.encode"),
    ("copyreg", "_reconstructor"): _SafeCallable(_reconstructor, "copyreg._reconstructor"),
    ("builtins", "getattr"): _SafeCallable(_getattr_on_global, "builtins.getattr"),
}
for _name, _kind in _PLAIN_BUILTIN_TYPES.items():
    _SAFE_GLOBALS[("builtins", _name)] = _kind
for _name in dir(torch):
    if isinstance(getattr(torch, _name, None), torch.dtype):
        _SAFE_GLOBALS[("torch", _name)] = getattr(torch, _name)

# Builtin types that REDUCE may call (e.g. set([...]), complex(1, 2)).
_CALLABLE_TYPES: dict[type, _SafeCallable] = {
    kind: _plain_type_call(kind)
    for kind in (set, frozenset, complex, slice, range, bytes, bytearray, list, tuple, dict, int, float, str, bool)
}

# Modules whose globals run code or touch the system: refused on sight, even as a mere reference.
_CODE_RUNNING_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "_posixsubprocess", "sys", "builtins", "__builtin__", "importlib", "runpy",
    "shutil", "socket", "ctypes", "pickle", "_pickle", "pickletools", "marshal", "code", "codeop", "pty", "signal",
    "multiprocessing", "webbrowser", "asyncio", "types", "inspect", "pdb", "bdb", "timeit", "platform", "tempfile",
    "glob", "io", "_io", "functools", "operator", "_operator", "ftplib", "http", "urllib", "smtplib", "telnetlib",
    "cProfile", "profile", "trace", "threading", "_thread", "sysconfig", "zipimport", "pkgutil", "site", "shelve",
    "dbm", "sqlite3", "codecs", "_codecs", "copyreg", "copy_reg", "torch", "numpy", "dill", "cloudpickle", "joblib",
    "setuptools", "pip", "distutils", "venv", "ensurepip", "sre_compile", "re", "ast", "dis", "exec", "eval",
})

# Foreign packages whose globals are data types (config trees, enums, paths, typing constructs): calling them is how
# their instances are pickled, so such a call is recorded as a placeholder instead of refused.
_DATA_PACKAGES = frozenset({
    "omegaconf", "hydra", "typing", "typing_extensions", "enum", "pathlib", "datetime", "argparse", "decimal",
    "fractions", "uuid", "collections", "dataclasses",
})

# Individual functions that only construct data and are common in checkpoints (recorded, never called).
_DATA_CONSTRUCTORS = frozenset({
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("operator", "getitem"), ("_operator", "getitem"),  # typing generics: Dict[str, Any] pickles as getitem(Dict, ..)
})


def _top_package(module: str) -> str:
    return module.split(".", 1)[0]


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """``pickle`` with a policy on every opcode that creates or calls something (see module docstring)."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    # ---- storages ---------------------------------------------------------------------------------------------
    # torch.load assigns its own persistent_load (which allocates or maps each storage); every record passes
    # _check_storage_record first, and the storage torch returns is checked to be as large as the record said.
    _torch_persistent_load: Callable[[Any], Any] | None = None

    @property
    def persistent_load(self) -> Callable[[Any], Any]:
        return self._checked_persistent_load

    @persistent_load.setter
    def persistent_load(self, function: Callable[[Any], Any]) -> None:
        self._torch_persistent_load = function

    def _checked_persistent_load(self, saved_id: Any) -> Any:
        if self._torch_persistent_load is None:
            raise pickle.UnpicklingError("persistent id in a plain pickle (only torch.load supplies storages)")
        _check_storage_record(saved_id)
        storage = self._torch_persistent_load(saved_id)
        numel = saved_id[4]
        if isinstance(storage, torch.storage.TypedStorage):
            # A memory-mapped zip storage is a slice of the file: cut short where the file ends.
            _require(storage._size() >= numel, f"storage {saved_id[2]!r} claims {numel:,} elements but the file "
                                               f"holds {storage._size():,} (truncated storage)")
        return storage

    # ---- globals ----------------------------------------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:
        if type(module) is not str or type(name) is not str:
            raise UnsafePickleError("a global with a non-string name")
        if self.proto < 3 and self.fix_imports:
            # Python 3 writes protocol-2 pickles with Python 2 module names (__builtin__, copy_reg, ...).
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if (module, name) in _DATA_CONSTRUCTORS:
            return GlobalRef(module, name)
        if _top_package(module) in _CODE_RUNNING_MODULES or name.startswith("__"):
            raise UnsafePickleError(
                f"refusing global '{module}.{name}': a weights file only needs tensors and plain data, and this "
                f"name can run code. The file is not a plain checkpoint (corrupt or malicious); nothing was executed.")
        return GlobalRef(module, name)

    # ---- calls and instance creation --------------------------------------------------------------------------
    def _call(self, func: Any, args: tuple, kwargs: dict | None = None) -> Any:
        if isinstance(func, _SafeCallable):
            if kwargs:
                raise UnsafePickleError(f"keyword arguments to {func.label}")
            return func.fn(*args)
        if isinstance(func, type) and func in _CALLABLE_TYPES and not kwargs:
            return _CALLABLE_TYPES[func].fn(*args)
        if func is collections.OrderedDict and not kwargs:
            return collections.OrderedDict(*[_plain_type_call(list).fn(a) for a in args])
        if isinstance(func, GlobalRef):
            key = (func.module, func.name)
            last = func.name.rsplit(".", 1)[-1]
            looks_like_class = last[:1].isupper()
            if key in _DATA_CONSTRUCTORS or _top_package(func.module) in _DATA_PACKAGES or looks_like_class:
                return PickledObject(func, args, kwargs, called=True)
            raise UnsafePickleError(
                f"refusing to call '{func.qualified_name}': the checkpoint's pickle calls a function, which a weights "
                f"file never needs (only tensors, plain data and data classes are accepted); nothing was executed.")
        raise UnsafePickleError(f"refusing to call an object of type {type(func).__name__} from the checkpoint")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        if not isinstance(args, tuple):
            raise UnsafePickleError("REDUCE with non-tuple arguments")
        self.stack[-1] = self._call(self.stack[-1], args)

    dispatch[pickle.REDUCE[0]] = load_reduce

    def _new_instance(self, cls: Any, args: tuple, kwargs: dict | None) -> Any:
        if isinstance(cls, GlobalRef):
            return PickledObject(cls, args, kwargs, called=False)
        if isinstance(cls, type) and cls in _NEWOBJ_TYPES and not kwargs:
            return cls.__new__(cls, *args)
        raise UnsafePickleError(f"refusing to create an instance of {getattr(cls, '__name__', type(cls).__name__)}")

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new_instance(cls, tuple(args), None))

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new_instance(cls, tuple(args), dict(kwargs)))

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _instantiate(self, klass: Any, args: list) -> None:
        # INST / OBJ (protocols 0 and 1): "klass(*args)" in plain pickle, so it follows the call policy.
        self.append(self._call(klass, tuple(args)) if args or not isinstance(klass, GlobalRef)
                    else PickledObject(klass, (), None, called=False))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, PickledObject):
            inst.state = state
            return
        if type(inst) is collections.OrderedDict and isinstance(state, dict) and all(type(k) is str for k in state):
            # state_dict() carries a `_metadata` attribute (module versions); plain attribute data, no code runs.
            vars(inst).update(state)
            return
        # torch.save never BUILDs tensors or other containers; state on a real object would run its __setstate__.
        raise UnsafePickleError(f"refusing to set state on a {type(inst).__name__} object")

    dispatch[pickle.BUILD[0]] = load_build


def load(file: BinaryIO, **kwargs: Any) -> Any:
    """``pickle.load`` with :class:`RestrictedUnpickler` (also what ``torch.load``'s legacy path calls)."""
    return RestrictedUnpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs: Any) -> Any:
    return load(io.BytesIO(data), **kwargs)


# torch.load(pickle_module=...) wants a module-like object with Unpickler and load.
pickle_module = types.ModuleType("ttt3r_ros.model.safe_pickle.pickle_module")
pickle_module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
pickle_module.load = load  # type: ignore[attr-defined]
pickle_module.loads = loads  # type: ignore[attr-defined]
pickle_module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------------------------------
# Placeholders -> plain data


def _numpy_scalar(obj: PickledObject) -> Any:
    """numpy.core.multiarray.scalar(dtype, raw bytes) -> Python number, decoded without numpy's unpickling."""
    if len(obj.args) != 2 or not isinstance(obj.args[1], bytes) or not isinstance(obj.args[0], PickledObject):
        return None
    dtype_args = obj.args[0].args
    if not dtype_args or not isinstance(dtype_args[0], str):
        return None
    import numpy as np  # data-only use: a validated dtype string and a byte buffer

    code = dtype_args[0]
    if code not in {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"}:
        return None
    dtype = np.dtype(code)
    if dtype.itemsize != len(obj.args[1]):
        return None
    return np.frombuffer(obj.args[1], dtype=dtype)[0].item()


def _omegaconf_value(obj: PickledObject, convert: Callable[[Any], Any]) -> tuple[bool, Any]:
    """OmegaConf containers become their content, value nodes their value (metadata and parents dropped)."""
    if not obj.cls.module.startswith("omegaconf.") or not isinstance(obj.state, dict):
        return False, None
    if "_content" in obj.state:
        return True, convert(obj.state["_content"])
    if "_val" in obj.state:
        return True, convert(obj.state["_val"])
    return False, None


def to_plain_data(value: Any) -> Any:
    """Turn unpickled data (with placeholders) into JSON-friendly dicts, lists and scalars.

    Foreign objects become ``{"__class__": dotted name, "args": [...], "state": ...}`` (empty parts left out),
    OmegaConf configs their content, numpy scalars Python numbers, tensors a short description, references to
    classes/functions ``{"__global__": dotted name}``. Cycles (OmegaConf's ``_parent``) are cut.
    """
    on_path: set[int] = set()

    def convert(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, str)):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else str(v)  # "inf"/"nan": keeps the JSON standard
        if isinstance(v, (bytes, bytearray)):
            return {"__bytes_hex__": bytes(v[:256]).hex(), "length": len(v)}
        if isinstance(v, complex):
            return {"__complex__": [v.real, v.imag]}
        if isinstance(v, torch.Tensor):
            out: dict[str, Any] = {"__tensor__": {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}}
            if v.numel() <= 16 and v.device.type != "meta":
                out["__tensor__"]["values"] = v.detach().flatten().tolist()
            return out
        if isinstance(v, torch.dtype):
            return str(v).replace("torch.", "")
        if isinstance(v, torch.device):
            return str(v)
        if isinstance(v, RejectedTensor):
            return {"__rejected_tensor__": {"shape": list(v.shape), "reason": v.reason}}
        if isinstance(v, GlobalRef):
            return {"__global__": v.qualified_name}
        if isinstance(v, _SafeCallable):
            return {"__global__": v.label}
        if isinstance(v, type):
            return {"__global__": f"{v.__module__}.{v.__qualname__}"}
        if id(v) in on_path:
            return "<recursive reference>"
        on_path.add(id(v))
        try:
            if isinstance(v, dict):
                return {k if isinstance(k, str) else str(convert(k)): convert(x) for k, x in v.items()}
            if isinstance(v, (list, tuple, set, frozenset)):
                return [convert(x) for x in v]
            if isinstance(v, PickledObject):
                handled, result = _omegaconf_value(v, convert)
                if handled:
                    return result
                if (v.cls.module, v.cls.name) in _DATA_CONSTRUCTORS and v.cls.name == "scalar":
                    number = _numpy_scalar(v)
                    if number is not None:
                        return number
                out = {"__class__": v.cls.qualified_name}
                if v.args:
                    out["args"] = convert(list(v.args))
                if v.kwargs:
                    out["kwargs"] = convert(v.kwargs)
                if v.state is not None:
                    out["state"] = convert(v.state)
                if v.dict_items:
                    out["items"] = convert(dict(v.dict_items)) if all(
                        isinstance(k, (str, int, float, bool)) for k, _ in v.dict_items) else convert(v.dict_items)
                if v.list_items:
                    out["list"] = convert(v.list_items)
                if v.set_items:
                    out["set"] = convert(v.set_items)
                return out
            return {"__unknown__": type(v).__name__}
        finally:
            on_path.discard(id(v))

    return convert(value)
