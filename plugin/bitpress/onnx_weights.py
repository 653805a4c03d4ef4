"""Weights out of ONNX models and back in: the model side of bitpress's Tensor-Train storage.

bitpress stores a neural network's large weight matrices in the database as Tensor-Train
decompositions. This module is the bridge to the ONNX file:

* **Reading.** ``load_model`` loads a model with its external data; ``readable_names`` gives
  every initializer a readable name (exporters call MatMul weights ``onnx::MatMul_470``; here
  that becomes ``model.0.auto_model.encoder.layer.0.attention.self.query.weight``, after the
  node that consumes it); ``select`` lists the float32 initializers (``WeightInfo``) with a
  flag saying whether bitpress should decompose each one (by default: the 2-D and larger
  weight matrices of at least 4096 elements, but not embedding tables, norms or biases);
  ``tensor`` gives one initializer as a numpy array.
* **Writing back.** ``graph_without_weights`` serializes the model with the data of the
  chosen initializers removed (name, dims and data type stay): a small *skeleton* stored next
  to the weights, so the model can be exported later. ``rebuild`` fills a skeleton from a
  ``{onnx_name: array}`` mapping (checking shapes and dtypes) and ``save`` writes the result
  atomically.

Everything goes through the ``onnx`` package (``onnx.load``, ``onnx.numpy_helper``); no
protobuf is written by hand. Only initializers are handled: weights held in ``Constant``
nodes or sparse initializers stay in the skeleton as they are.
"""
from __future__ import annotations

import errno
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import BitpressError

__all__ = [
    "DEFAULT_EXCLUDE",
    "DEFAULT_MIN_SIZE",
    "OnnxWeightsError",
    "WeightInfo",
    "graph_without_weights",
    "load_model",
    "readable_names",
    "rebuild",
    "save",
    "select",
    "tensor",
    "weights",
]

#: Names not decomposed by default (matched case-insensitively with ``re.search``):
#: embedding tables, normalisation weights and biases.
DEFAULT_EXCLUDE = r"(embedding|LayerNorm|norm|\.bias$)"
#: Smallest initializer (in elements) decomposed by default.
DEFAULT_MIN_SIZE = 4096

# Names that exporters generate: "onnx::MatMul_470", "470", "_v_12", "__3".
_GENERATED = re.compile(r"onnx::.*|[\d_.:]*|_+[A-Za-z]*_?\d+", re.DOTALL)

# The fields of a TensorProto that hold (or point to) its data; the others (name, dims,
# data_type, segment, doc_string, metadata_props) describe it and stay in a skeleton.
_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "string_data", "int64_data",
                "double_data", "uint64_data", "external_data", "data_location")

_MAX_PROTO = 2**31 - 1  # protobuf cannot serialize a message of 2 GiB or more


class OnnxWeightsError(BitpressError):
    """An ONNX file that is not a model, an unknown initializer, or weights that do not fit."""

    sqlstate = "22023"


# ---------------------------------------------------------------------------- loading


def load_model(path) -> onnx.ModelProto:
    """The ONNX model at ``path`` with all its external data loaded.

    External data files are looked up relative to the model's directory (what
    ``onnx.load`` does). Raises ``FileNotFoundError`` for a missing model or external data
    file and ``OnnxWeightsError`` (a ``ValueError``) for a file that is not an ONNX model;
    both messages name the file.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(errno.ENOENT, "ONNX model file not found", str(p))
    if not p.is_file():
        raise OnnxWeightsError(f"{p} is not a file, cannot load it as an ONNX model")
    try:  # what onnx.load(path, load_external_data=True) does, in two steps for clear errors
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # DecodeError, ...
        raise OnnxWeightsError(f"{p} is not a valid ONNX model: {e}") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise OnnxWeightsError(f"{p} is not a valid ONNX model (no IR version or no graph)")
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except Exception as e:  # a missing file, a location outside the directory, ...
        raise FileNotFoundError(
            errno.ENOENT, f"cannot load the external data of the ONNX model {p}: {e}",
            str(p)) from None
    return model


# ----------------------------------------------------------------------- graph helpers


def _subgraphs(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _nodes(graph: onnx.GraphProto):
    """Every node of ``graph`` and of its subgraphs (If, Loop, Scan bodies), in order."""
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from _nodes(sub)


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Initializer name -> the nodes that read it (each node once, in graph order)."""
    names = {t.name for t in model.graph.initializer}
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in _nodes(model.graph):
        for name in dict.fromkeys(node.input):  # a node reading a tensor twice counts once
            if name in names:
                out.setdefault(name, []).append(node)
    return out


def _is_generated(name: str) -> bool:
    return _GENERATED.fullmatch(name) is not None


def _is_repeated(fd) -> bool:
    flag = getattr(fd, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return fd.label == fd.LABEL_REPEATED  # pragma: no cover - protobuf < 5.29


def _copy_fields(src, dst, skip=()) -> None:
    """Copy the set fields of protobuf message ``src`` into the empty ``dst``, but ``skip``."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        target = getattr(dst, fd.name)
        if _is_repeated(fd):
            target.extend(value)
        elif fd.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _has_data(t: onnx.TensorProto) -> bool:
    return bool(t.raw_data or t.float_data or t.int32_data or t.string_data or t.int64_data
                or t.double_data or t.uint64_data or t.external_data)


def _initializer(model: onnx.ModelProto, onnx_name: str) -> onnx.TensorProto:
    for t in model.graph.initializer:
        if t.name == onnx_name:
            return t
    raise OnnxWeightsError(f"the model has no initializer {onnx_name!r}")


# ---------------------------------------------------------------------------- naming


def readable_names(model: onnx.ModelProto) -> dict[str, str]:
    """Graph initializer name -> readable name, for every initializer, in graph order.

    Names that already look readable are kept. A generated name (``onnx::...``, only
    digits/underscores, or ``_v_12``-like) of a tensor read by exactly one named node is
    replaced after that node: its name ``/model/model.0/.../query/MatMul`` gives the module
    path ``model, model.0, ..., query`` (the last part, the op, dropped); leading components
    are dropped one by one until the dotted rest is a prefix (up to a ``.``) of a readable
    initializer name (such as the bias ``model.0....query.bias``), and the name is that
    prefix + ``.weight``; when no suffix matches, the whole dotted path + ``.weight``. A
    tensor read by several nodes, by none, or by a node without a name (or a one-part name)
    keeps its name. Clashes get ``.1``, ``.2``, ... in graph order.
    """
    inits = [t.name for t in model.graph.initializer]
    readable = [n for n in inits if not _is_generated(n)]
    prefixes: set[str] = set()
    for n in readable:
        parts = n.split(".")
        prefixes.update(".".join(parts[:i]) for i in range(1, len(parts)))

    consumers = _consumers(model)
    wanted: dict[str, str] = {}  # generated name -> base of its new name
    for name in inits:
        if not _is_generated(name):
            continue
        nodes = consumers.get(name, [])
        if len(nodes) != 1 or not nodes[0].name:
            continue
        path = [p for p in nodes[0].name.split("/") if p][:-1]
        if not path:
            continue
        base = ".".join(path)
        for start in range(len(path)):
            rest = ".".join(path[start:])
            if rest in prefixes:
                base = rest
                break
        wanted[name] = base + ".weight"

    used = {n for n in inits if n not in wanted}  # kept names are never renamed
    out: dict[str, str] = {}
    for name in inits:
        if name not in wanted:
            out[name] = name
            continue
        new, i = wanted[name], 0
        while new in used:
            i += 1
            new = f"{wanted[name]}.{i}"
        used.add(new)
        out[name] = new
    return out


# ------------------------------------------------------------------------ selection


@dataclass(frozen=True)
class WeightInfo:
    """One float32 initializer of a model.

    ``onnx_name``: its name in the graph; ``name``: its readable name (``readable_names``);
    ``shape``; ``dtype`` (numpy dtype name, ``"float32"``); ``size`` (elements);
    ``consumers``: the op types of the nodes that read it, in graph order.
    """

    onnx_name: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    size: int
    consumers: tuple[str, ...]


def weights(model: onnx.ModelProto) -> list[WeightInfo]:
    """A ``WeightInfo`` for every float32 initializer, in graph initializer order.

    Initializers of other types (int64 shape constants, ...) are not listed.
    """
    names = readable_names(model)
    consumers = _consumers(model)
    out = []
    for t in model.graph.initializer:
        if t.data_type != onnx.TensorProto.FLOAT:
            continue
        shape = tuple(int(d) for d in t.dims)
        out.append(WeightInfo(
            onnx_name=t.name, name=names[t.name], shape=shape, dtype="float32",
            size=int(np.prod(shape, dtype=np.int64)),
            consumers=tuple(n.op_type for n in consumers.get(t.name, []))))
    return out


def _pattern(p, flags=0):
    return p if isinstance(p, re.Pattern) else re.compile(p, flags)


def select(model: onnx.ModelProto, include=None, exclude=None, min_size: int | None = None,
           *, skip_gather: bool = True) -> list[tuple[WeightInfo, bool]]:
    """Every float32 initializer (graph order) with a flag: should bitpress decompose it?

    The flag is True when the readable name matches ``include`` (``re.search``; default:
    any name), does not match ``exclude`` (default ``DEFAULT_EXCLUDE`` matched
    case-insensitively: embeddings, norms and biases; ``""`` excludes nothing; a pattern you
    pass is used as written, add ``(?i)`` for case-insensitive), the tensor has at least 2
    dimensions and ``min_size`` elements (default ``DEFAULT_MIN_SIZE`` = 4096), and, with
    ``skip_gather`` (the default), no ``Gather`` node reads it: such a tensor is an
    embedding table, looked up row by row rather than multiplied.
    """
    inc = _pattern(include) if include is not None else None
    if exclude is None:
        exc = re.compile(DEFAULT_EXCLUDE, re.IGNORECASE)
    elif isinstance(exclude, str) and exclude == "":
        exc = None
    else:
        exc = _pattern(exclude)
    min_size = DEFAULT_MIN_SIZE if min_size is None else int(min_size)
    out = []
    for w in weights(model):
        flag = ((inc is None or inc.search(w.name) is not None)
                and (exc is None or exc.search(w.name) is None)
                and len(w.shape) >= 2
                and w.size >= min_size
                and not (skip_gather and "Gather" in w.consumers))
        out.append((w, flag))
    return out


def tensor(model: onnx.ModelProto, onnx_name: str) -> np.ndarray:
    """The initializer ``onnx_name`` as a C-contiguous numpy array (a copy)."""
    t = _initializer(model, onnx_name)
    if onnx.external_data_helper.uses_external_data(t):
        raise OnnxWeightsError(
            f"the data of initializer {onnx_name!r} is in an external file that was not "
            f"loaded: load the model with bitpress.onnx_weights.load_model")
    size = int(np.prod(t.dims, dtype=np.int64))
    if size and not _has_data(t):
        raise OnnxWeightsError(f"initializer {onnx_name!r} has no data (a skeleton?)")
    return np.array(numpy_helper.to_array(t), order="C", copy=True)


# --------------------------------------------------------------- skeleton and rebuild


def graph_without_weights(model: onnx.ModelProto, onnx_names) -> bytes:
    """The serialized model with the data of initializers ``onnx_names`` removed.

    Those initializers keep their name, dims, data type (and doc string) but lose their
    data, inline or external. The result parses with ``onnx.load_from_string`` and is what
    ``rebuild`` takes. ``model`` is not changed, and the removed data is never copied.
    """
    names = set(onnx_names)
    present = {t.name for t in model.graph.initializer}
    unknown = sorted(names - present)
    if unknown:
        raise OnnxWeightsError(f"the model has no initializer(s) {unknown}")
    graph = onnx.GraphProto()
    _copy_fields(model.graph, graph, skip=("initializer",))
    for t in model.graph.initializer:
        new = graph.initializer.add()
        if t.name in names:
            _copy_fields(t, new, skip=_DATA_FIELDS)
        else:
            new.CopyFrom(t)
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip=("graph",))
    skeleton.graph.CopyFrom(graph)
    if skeleton.ByteSize() > _MAX_PROTO:
        raise OnnxWeightsError(
            "the skeleton is 2 GB or more: remove more initializers from it")
    return skeleton.SerializeToString()


def rebuild(skeleton: bytes, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The model of ``skeleton`` (from ``graph_without_weights``) with its weights back.

    Each initializer without data is filled from ``weights[onnx_name]`` with
    ``numpy_helper.from_array``. Raises ``OnnxWeightsError`` (a ``ValueError``) naming the
    tensor when a weight is missing, has another shape or dtype than the skeleton says, or
    names no emptied initializer of the skeleton.
    """
    try:
        model = onnx.load_from_string(bytes(skeleton))
    except Exception as e:
        raise OnnxWeightsError(f"the skeleton is not a valid ONNX model: {e}") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise OnnxWeightsError("the skeleton is not a valid ONNX model (no IR version or graph)")
    empty = {t.name: t for t in model.graph.initializer
             if not _has_data(t) and t.data_type != onnx.TensorProto.UNDEFINED}
    extra = sorted(set(weights) - set(empty))
    if extra:
        raise OnnxWeightsError(
            f"weights given for {extra}, which are not emptied initializers of the skeleton")
    missing = sorted(name for name, t in empty.items()
                     if name not in weights and int(np.prod(t.dims, dtype=np.int64)) > 0)
    if missing:
        raise OnnxWeightsError(f"no weights given for the initializer(s) {missing}")
    for name, t in empty.items():
        if name not in weights:
            continue  # a zero-size tensor: nothing to fill
        arr = np.asarray(weights[name])
        shape = tuple(int(d) for d in t.dims)
        expected = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        if arr.dtype != expected:
            raise OnnxWeightsError(
                f"weight {name!r} has dtype {arr.dtype}, the model wants {np.dtype(expected)}")
        if arr.shape != shape:
            raise OnnxWeightsError(
                f"weight {name!r} has shape {arr.shape}, the model wants {shape}")
        filled = numpy_helper.from_array(np.ascontiguousarray(arr), name=name)
        if filled.data_type != t.data_type or tuple(filled.dims) != shape:  # pragma: no cover
            raise OnnxWeightsError(f"weight {name!r} does not convert to the model's type")
        for fd, value in filled.ListFields():
            if fd.name in _DATA_FIELDS:
                target = getattr(t, fd.name)
                if _is_repeated(fd):
                    target.extend(value)
                else:
                    setattr(t, fd.name, value)
    return model


def save(model: onnx.ModelProto, path) -> None:
    """Write ``model`` to ``path`` atomically: a temporary file in the same directory, then
    ``os.replace``. An existing file keeps its permissions; a new one gets 0644. Models of
    2 GB or more (which need external data) are refused."""
    path = Path(path)
    if model.ByteSize() > _MAX_PROTO:
        raise OnnxWeightsError(f"cannot save {path}: the model is 2 GB or more")
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                               dir=path.parent if str(path.parent) else ".")
    try:
        os.close(fd)
        with open(tmp, "wb") as f:  # a named file object: onnx.save_model wants f.name
            onnx.save_model(model, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
