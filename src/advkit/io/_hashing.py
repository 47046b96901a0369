"""Checksums and fingerprints: of files, of tensors, of the export's configuration, and of
what a callable (an objective, a target map) computes.

A resumed export must be the same computation as the run that wrote the shards
on disk, so every setting goes into the configuration's fingerprint in a form
that is the same in every process and never depends on memory addresses or
hash randomization. Callables are described by `describe_callable`:

1. functions and classes importable under their qualified name from a module
   other than ``__main__`` (``advkit.objectives.margin``, a function of your
   package): that name, like the attack's own class;
2. everything else that can be read (lambdas, closures, nested functions,
   functions of the running script or notebook, ``functools.partial``, bound
   methods, callable objects): a SHA-256 of what it computes: the code
   (bytecode, constants, names), default arguments, closure cells, the
   globals the code reads and the partial's or object's arguments and state,
   recursively, with tensors and arrays by content and models by their weights;
3. a callable that reaches something that cannot be read that way (say, a
   closure over an open file or a dataset object): marked ``"unverified"``,
   and `advkit.io.export` refuses to resume with it unless told to trust it.
"""

from __future__ import annotations

import dataclasses
import dis
import enum
import functools
import hashlib
import json
import math
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advkit.attacks.base import Attack

__all__ = [
    "config_sha256",
    "describe_attack",
    "describe_callable",
    "jsonable",
    "model_sha256",
    "payload_sha256",
    "sha256_file",
    "tensor_bytes",
    "unverified_fields",
]

_HASH_CHUNK = 1 << 24


def tensor_bytes(t: Tensor) -> Any:
    """The raw bytes of ``t`` (any dtype, bfloat16 included) as a numpy uint8 array."""
    flat = t.detach().contiguous().cpu().reshape(-1)
    return flat.view(torch.uint8).numpy()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def payload_sha256(tensors: Mapping[str, Tensor]) -> str:
    """A checksum of the tensors' names, dtypes, shapes and contents (not of the file)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def model_sha256(model: nn.Module) -> str:
    """A checksum of a model's state dict: parameter and buffer names, dtypes, shapes, values."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def config_sha256(config: Mapping[str, Any]) -> str:
    """The fingerprint of an export's configuration (its canonical JSON)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def jsonable(value: Any) -> Any:
    """A JSON-safe, deterministic rendering of a setting (floats kept exact via repr)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, Tensor):
        return {"tensor_sha256": payload_sha256({"t": value}), "shape": list(value.shape)}
    if isinstance(value, Attack):  # an attack that holds attacks
        return describe_attack(value)
    return describe_callable(value)


def describe_attack(attack: Attack) -> dict[str, Any]:
    """An attack's class, settings, norm and objective, for the configuration."""
    return {
        "class": f"{type(attack).__module__}.{type(attack).__qualname__}",
        "repr": repr(attack),
        "settings": jsonable(attack._settings()),
        "norm": repr(attack.norm),
        "objective": describe_callable(attack.objective),
    }


def unverified_fields(config: Any, prefix: str = "") -> list[str]:
    """The dotted paths of every ``"unverified"`` callable in a configuration."""
    if isinstance(config, Mapping):
        if "unverified" in config:
            return [prefix.rstrip(".")]
        out: list[str] = []
        for k in sorted(config):
            out += unverified_fields(config[k], f"{prefix}{k}.")
        return out
    if isinstance(config, list):
        return [p for i, v in enumerate(config) for p in unverified_fields(v, f"{prefix}{i}.")]
    return []


# --------------------------------------------------------------------------- callables


class _Unreadable(Exception):
    """Raised inside the fingerprint when a part of a callable cannot be read."""


def describe_callable(obj: Any) -> Any:
    """A description of a callable (or setting) that is the same in every process.

    A string ``"module.qualname"`` for a function or class importable under
    that name (outside ``__main__``), ``"module.repr"`` for an object whose
    class has its own address-free ``repr`` (advkit's target maps and norms),
    else ``{"callable": name, "sha256": ...}`` with a fingerprint of what it
    computes, or ``{"callable": name, "unverified": reason}`` where some part
    cannot be read (see the module's docstring).
    """
    name = _display_name(obj)
    try:
        desc = _callable(obj, set()) if callable(obj) else _value(obj, set())
    except _Unreadable as err:
        return {"callable": name, "unverified": str(err)}
    except RecursionError:
        return {"callable": name, "unverified": "objects nested too deeply to read"}
    if isinstance(desc, str):
        return desc
    digest = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()
    return {"callable": name, "sha256": digest}


def _display_name(obj: Any) -> str:
    target = obj.func if isinstance(obj, functools.partial) else obj
    module = getattr(target, "__module__", None) or type(target).__module__
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    prefix = "functools.partial of " if target is not obj else ""
    return f"{prefix}{module}.{qualname}"


def _importable_name(obj: Any) -> str | None:
    """``module.qualname`` if that name, looked up in the loaded module, is ``obj`` itself."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    if module == "__main__" or "<" in qualname:
        return None
    target: Any = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return f"{module}.{qualname}" if target is obj else None


def _own_repr(obj: Any) -> str | None:
    """``obj``'s repr if its class (not ``object``) defines one without a memory address."""
    cls = type(obj)
    if not any("__repr__" in vars(k) for k in cls.__mro__[:-1]):
        return None
    text = repr(obj)
    return None if " at 0x" in text else text


def _callable(obj: Any, seen: set[int]) -> Any:
    if isinstance(obj, type):  # a class is named, wherever it was defined
        return f"{obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, types.FunctionType):
        return _importable_name(obj) or _function(obj, seen)
    if isinstance(obj, types.MethodType):
        return {"method": _callable(obj.__func__, seen), "self": _value(obj.__self__, seen)}
    if isinstance(obj, functools.partial):
        return {
            "partial": _callable(obj.func, seen),
            "args": [_value(a, seen) for a in obj.args],
            "keywords": {k: _value(v, seen) for k, v in sorted(obj.keywords.items())},
        }
    if isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        owner = getattr(obj, "__self__", None)
        if owner is None or isinstance(owner, (types.ModuleType, type)):
            named = _importable_name(obj)
            if named is not None:
                return named
            where = owner.__name__ if owner is not None else getattr(obj, "__module__", "?")
            return f"builtin:{where}.{obj.__name__}"
        return {"builtin_method": obj.__name__, "self": _value(owner, seen)}
    if isinstance(
        obj,
        (types.MethodDescriptorType, types.WrapperDescriptorType, types.ClassMethodDescriptorType),
    ):
        owner_cls = obj.__objclass__
        return f"descriptor:{owner_cls.__module__}.{owner_cls.__qualname__}.{obj.__name__}"
    # a callable object: its class and what it holds
    return _value(obj, seen)


def _function(fn: types.FunctionType, seen: set[int]) -> Any:
    if id(fn) in seen:
        return {"recursion": fn.__qualname__}
    seen = seen | {id(fn)}
    code = fn.__code__
    names = sorted(_global_names(code))
    scope = fn.__globals__
    closure = []
    for cell in fn.__closure__ or ():
        try:
            content = cell.cell_contents
        except ValueError:  # an empty cell (a variable not assigned yet)
            closure.append({"empty": True})
        else:
            closure.append(_value(content, seen))
    return {
        "function": fn.__qualname__,
        "code": _code(code),
        "defaults": _value(fn.__defaults__, seen),
        "kwdefaults": _value(fn.__kwdefaults__, seen),
        "closure": closure,
        "globals": {n: _value(scope[n], seen) for n in names if n in scope},
    }


def _global_names(code: types.CodeType) -> set[str]:
    """The global names the code (and the code nested in it) reads."""
    names = {
        str(ins.argval)
        for ins in dis.get_instructions(code)
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME")
    }
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _code(code: types.CodeType) -> Any:
    """What a code object computes: bytecode, constants and names, not where it was written."""
    return {
        "bytecode": hashlib.sha256(code.co_code).hexdigest(),
        "consts": [
            _code(c) if isinstance(c, types.CodeType) else _const(c) for c in code.co_consts
        ],
        "names": list(code.co_names),
        "varnames": list(code.co_varnames),
        "freevars": list(code.co_freevars),
        "cellvars": list(code.co_cellvars),
        "args": [code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount],
        "flags": code.co_flags,
    }


def _const(c: Any) -> Any:
    if isinstance(c, (frozenset, set)):
        return {"set": sorted(json.dumps(_const(v), sort_keys=True) for v in c)}
    if isinstance(c, tuple):
        return {"tuple": [_const(v) for v in c]}
    if isinstance(c, types.CodeType):
        return _code(c)
    return _scalar(c)


def _scalar(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return {type(v).__name__: v}
    if isinstance(v, (float, complex)):
        return {type(v).__name__: repr(v)}
    if isinstance(v, bytes):
        return {"bytes": hashlib.sha256(v).hexdigest()}
    if v is Ellipsis:
        return {"ellipsis": True}
    if isinstance(v, slice):
        return {"slice": [_scalar(v.start), _scalar(v.stop), _scalar(v.step)]}
    raise _Unreadable(f"a constant of type {type(v).__name__}")


def _value(v: Any, seen: set[int]) -> Any:
    """What a value the callable reads holds, as JSON (see the module's docstring)."""
    if v is None or isinstance(v, (bool, int, float, complex, str, bytes, slice)) or v is Ellipsis:
        return _scalar(v)
    if isinstance(v, Tensor):
        return {"tensor": str(v.dtype), "shape": list(v.shape), "sha256": payload_sha256({"t": v})}
    if isinstance(v, np.ndarray | np.generic):
        arr = np.ascontiguousarray(v)
        digest = hashlib.sha256(arr.view(np.uint8).reshape(-1).tobytes()).hexdigest()
        return {"array": str(arr.dtype), "shape": list(arr.shape), "sha256": digest}
    if isinstance(v, (torch.dtype, torch.device)):
        return {type(v).__name__: str(v)}
    if isinstance(v, types.ModuleType):
        return {"module": v.__name__}
    if isinstance(v, enum.Enum):
        return {"enum": f"{type(v).__module__}.{type(v).__qualname__}.{v.name}"}
    if isinstance(v, (list, tuple, set, frozenset, dict)):
        if id(v) in seen:  # a container that holds itself
            return {"recursion": type(v).__name__}
        inner = seen | {id(v)}
        if isinstance(v, dict):
            pairs = [(_value(k, inner), _value(x, inner)) for k, x in v.items()]
            return {"dict": sorted(pairs, key=lambda kv: json.dumps(kv, sort_keys=True))}
        if isinstance(v, (set, frozenset)):
            return {"set": sorted(json.dumps(_value(x, inner), sort_keys=True) for x in v)}
        return {type(v).__name__: [_value(x, inner) for x in v]}
    if isinstance(v, types.CodeType):
        return _code(v)
    if isinstance(v, nn.Module):
        return {"model": f"{type(v).__module__}.{type(v).__qualname__}", "repr": repr(v),
                "state_sha256": model_sha256(v)}  # fmt: skip
    if isinstance(
        v,
        (
            type,
            types.FunctionType,
            types.MethodType,
            functools.partial,
            types.BuiltinFunctionType,
            types.MethodDescriptorType,
            types.WrapperDescriptorType,
            types.ClassMethodDescriptorType,
        ),
    ):
        return _callable(v, seen)
    return _instance(v, seen)


def _instance(v: Any, seen: set[int]) -> Any:
    """Any other object: a dataclass by its fields, an object with its own address-free
    ``repr`` by that repr, a callable object by its class and attributes."""
    cls = type(v)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if id(v) in seen:
        return {"recursion": name}
    seen = seen | {id(v)}
    state: Any
    if dataclasses.is_dataclass(v):
        state = {f.name: getattr(v, f.name) for f in dataclasses.fields(v)}
        # a repr elides the middle of large tensors: those are read by content
        arrays = any(isinstance(x, (Tensor, np.ndarray)) for x in state.values())
        text = None if arrays else _own_repr(v)
    else:
        text = _own_repr(v)
        state = getattr(v, "__dict__", None) if callable(v) else None
    if text is not None:  # advkit's target maps and norms, dataclasses of plain values
        return f"{cls.__module__}.{text}"
    if not isinstance(state, dict):
        raise _Unreadable(f"a {name} object")
    out: dict[str, Any] = {
        "object": name,
        "state": {str(k): _value(x, seen) for k, x in sorted(state.items())},
    }
    if callable(v):
        out["call"] = _callable(cls.__call__, seen)
    return out
