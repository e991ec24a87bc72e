"""Import fairseq checkpoints (wav2vec, vq-wav2vec, wav2vec 2.0, wav2vec 2.0 CTC, RoBERTa on units) without fairseq.

A fairseq ``.pt`` is a pickle: besides tensors it holds an ``argparse.Namespace``
(old ``args``), an omegaconf ``DictConfig`` or a plain dict (``cfg``), enums, numpy
scalars... Unpickling it with the standard unpickler can run any code the file
names (``os.system``...), and ``torch.load(weights_only=True)`` cannot build those
objects. So :func:`safe_torch_load` hands ``torch.load`` a restricted unpickler:

* tensors, storages and plain containers come from torch's own weights-only
  allowlist plus a few harmless builtins and numpy scalar/array rebuilders;
* ``argparse.Namespace`` and everything from ``omegaconf``, ``fairseq``, ``typing``
  and ``enum`` become inert stand-ins (they record their arguments and state, never
  import or run the real class) and are turned into plain dicts, lists and values;
* any other global (``os.system``, ``subprocess.Popen``, ``builtins.eval``, ...)
  stops the load before it is called: :class:`~w2vtools.errors.W2VError`
  ``"<path>: refusing to load: the pickle references os.system, which is not on the allowlist"``.

:func:`load_fairseq` then reads the architecture from ``args`` or ``cfg`` (wav2vec
2019 argparse defaults for fields an old file lacks), builds our model and loads
the weights (fp16 weights are cast to float32). A CTC fine-tuned model needs its
output dictionary, which fairseq keeps in the data folder (``dict.ltr.txt``), not
in the checkpoint: pass it, or put ``dict.ltr.txt`` next to the checkpoint. A RoBERTa
trained on vq-wav2vec units (``masked_lm`` task, vq-wav2vec's ``bert_kmeans.pt``) is
read the same way, its ``dict.txt`` of units found likewise: it loads as a unit BERT
(:class:`~w2vtools.models.token_transformer.TokenTransformer`, family ``unit-bert``).

Example:
    >>> loaded = load_fairseq("wav2vec_small_960h.pt", dictionary="dict.ltr.txt")  # doctest: +SKIP
    >>> loaded.family, loaded.task, loaded.dictionary[:5]  # doctest: +SKIP
    ('wav2vec2', 'ctc', ['<s>', '<pad>', '</s>', '<unk>', '|'])
"""

from __future__ import annotations

import _compat_pickle
import ast
import collections
import dataclasses
import importlib
import logging
import os
import pickle
import re
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

from w2vtools.errors import W2VError
from w2vtools.formats.labels import ctc_vocabulary, read_dictionary
from w2vtools.formats.units import unit_vocabulary
from w2vtools.models.checkpoint import LoadedModel, few_names
from w2vtools.models.ctc import CTCConfig, CTCModel
from w2vtools.models.token_transformer import TokenTransformer
from w2vtools.models.unit_bert import UnitBertConfig
from w2vtools.models.wav2vec import Wav2VecConfig, Wav2VecModel
from w2vtools.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

log = logging.getLogger("w2v.fairseq")

# --------------------------------------------------------------------------- restricted unpickling

# Module prefixes whose globals become inert stand-ins (never imported).
_STAND_IN_MODULES = ("omegaconf", "fairseq", "typing", "enum", "hydra")
_STAND_IN_NAMES = {"argparse.Namespace", "pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath",
                   "pathlib.PurePosixPath", "pathlib.PureWindowsPath"}

_SAFE_BUILTINS = {
    "dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float", "complex",
    "bool", "slice", "range", "object", "NoneType",
}

# numpy globals that only rebuild data (scalars in fairseq's extra_state, e.g. best_loss)
_NUMPY_SAFE = {
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "dtype"), ("numpy", "ndarray"),
}


class _Refused(Exception):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class StandIn:
    """An inert placeholder for an allowlisted class or enum the pickle names.

    It records constructor arguments and pickled state; :func:`plain` turns it into
    plain Python. ``global_name`` says what the pickle referenced.
    """

    global_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        obj.__dict__["_kwargs"] = kwargs
        obj.__dict__["_state"] = None
        obj.__dict__["_items"] = []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state

    # list/dict subclasses are filled with APPENDS / SETITEMS
    def append(self, item):
        self.__dict__["_items"].append(item)

    def extend(self, items):
        self.__dict__["_items"].extend(items)

    def __setitem__(self, key, value):
        self.__dict__["_items"].append((key, value))

    def __repr__(self) -> str:
        return f"<stand-in {self.global_name}>"


_stand_in_classes: dict[str, type] = {}


def _stand_in(name: str) -> type:
    cls = _stand_in_classes.get(name)
    if cls is None:
        cls = type("StandIn_" + re.sub(r"\W", "_", name), (StandIn,), {"global_name": name})
        _stand_in_classes[name] = cls
    return cls


def _torch_allowed() -> dict[str, Any]:
    try:
        from torch import _weights_only_unpickler

        return dict(_weights_only_unpickler._get_allowed_globals())
    except Exception:  # pragma: no cover - private API moved; fall back to the essentials
        import collections

        from torch import _utils

        return {
            "collections.OrderedDict": collections.OrderedDict,
            "torch._utils._rebuild_tensor_v2": _utils._rebuild_tensor_v2,
            "torch._utils._rebuild_parameter": _utils._rebuild_parameter,
        }


_TORCH_ALLOWED: dict[str, Any] | None = None


def _resolve_global(module: str, name: str):
    """The object a pickle may use for ``module.name``; raises _Refused otherwise."""
    global _TORCH_ALLOWED
    if (module, name) in _compat_pickle.NAME_MAPPING:  # python 2 names in protocol-2 pickles
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    full = f"{module}.{name}"
    if _TORCH_ALLOWED is None:
        _TORCH_ALLOWED = _torch_allowed()
    if full in _TORCH_ALLOWED:
        return _TORCH_ALLOWED[full]
    if module == "builtins" and name in _SAFE_BUILTINS:
        return type(None) if name == "NoneType" else getattr(__import__("builtins"), name)
    if full in ("collections.OrderedDict", "collections.defaultdict", "collections.Counter",
                "collections.deque"):
        return getattr(importlib.import_module("collections"), name)
    if full == "copyreg._reconstructor":
        return _reconstructor
    if (module, name) in _NUMPY_SAFE:
        import numpy as np

        if name == "dtype":
            return np.dtype
        if name == "ndarray":
            return np.ndarray
        try:
            multiarray = importlib.import_module("numpy._core.multiarray")
        except ImportError:  # numpy < 2
            multiarray = importlib.import_module("numpy.core.multiarray")
        return getattr(multiarray, name)
    if full in _STAND_IN_NAMES or module.split(".")[0] in _STAND_IN_MODULES:
        return _stand_in(full)
    raise _Refused(full)


def _reconstructor(cls, base, state):
    # copyreg._reconstructor for protocol 0/1 pickles, limited to stand-ins and plain builtins
    if isinstance(cls, type) and issubclass(cls, StandIn):
        obj = cls.__new__(cls)
        if state is not None:
            obj.__dict__["_args"] = (state,)
        return obj
    if base is object:
        return object.__new__(cls)
    return base.__new__(cls, state)


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose ``find_class`` only yields allowlisted or inert objects."""

    def find_class(self, module: str, name: str):  # noqa: D102
        return _resolve_global(module, name)


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


# What torch.load calls: ``pickle_module.Unpickler`` (subclassed by torch) and ``.load``.
restricted_pickle = types.ModuleType("w2v_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = _restricted_load
restricted_pickle.__dict__["UnpicklingError"] = pickle.UnpicklingError


def safe_torch_load(path: str | os.PathLike, map_location="cpu") -> Any:
    """``torch.load`` a fairseq checkpoint without running any code from it.

    Returns the checkpoint as plain Python (dicts, lists, scalars, tensors); pickled
    Namespace/DictConfig/ListConfig/enums come back as dicts/lists/values (see
    :func:`plain`).

    Raises:
        W2VError: the pickle names a global outside the allowlist (nothing from it
            ran), or the file is not a readable torch checkpoint.

    Example:
        >>> state = safe_torch_load("wav2vec_small.pt")  # doctest: +SKIP
        >>> sorted(state)[:3]  # doctest: +SKIP
        ['args', 'cfg', 'criterion']
    """
    try:
        # zip checkpoints are memory-mapped: a multi-GB file with optimizer state
        # costs only the tensors we keep
        mmap = zipfile.is_zipfile(path)
        data = torch.load(path, map_location=map_location, pickle_module=restricted_pickle, weights_only=False,
                          mmap=mmap)
    except _Refused as e:
        raise W2VError(
            f"{path}: refusing to load: the pickle references {e.name}, which is not on the allowlist"
        ) from None
    except FileNotFoundError:
        raise W2VError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise W2VError(f"{path}: is a folder, not a checkpoint file") from None
    except Exception as e:  # corrupt zip, truncated file, not a pickle ...
        raise W2VError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    try:
        return plain(data)
    except RecursionError:
        raise W2VError(f"{path}: the checkpoint's config is nested too deeply (or refers to itself)") from None


def _stand_in_value(obj: StandIn):
    name = obj.global_name
    state = obj.__dict__["_state"]
    args = obj.__dict__["_args"]
    items = obj.__dict__["_items"]
    if name == "argparse.Namespace":
        d = dict(state or {})
        d.update(obj.__dict__["_kwargs"])
        return {k: plain(v) for k, v in d.items()}
    if name.startswith("omegaconf."):
        if isinstance(state, dict) and "_content" in state:  # DictConfig / ListConfig
            return plain(state["_content"])
        if isinstance(state, dict) and "_val" in state:  # AnyNode, StringNode, EnumNode, ...
            return plain(state["_val"])
        if isinstance(state, dict) and name.endswith("Metadata"):
            return None
    if name.startswith("pathlib."):
        return str(Path(*[plain(a) for a in args]))
    if state is None and not items and len(args) == 1:
        return plain(args[0])  # an enum member pickled as Enum(value)
    if items:
        if all(isinstance(i, tuple) and len(i) == 2 for i in items):
            return {plain(k): plain(v) for k, v in items}
        return [plain(i) for i in items]
    if isinstance(state, dict):
        return {k: plain(v) for k, v in state.items() if not str(k).startswith("_")} or None
    if state is not None:
        return plain(state)
    return None  # a bare reference (typing.Any, a class used as a type annotation)


def plain(obj):
    """Turn stand-ins (Namespace, DictConfig, ListConfig, nodes, enums) into plain Python, recursively.

    Example:
        >>> plain({"a": [1, (2, 3)]})
        {'a': [1, (2, 3)]}
    """
    if isinstance(obj, StandIn):
        return _stand_in_value(obj)
    if isinstance(obj, type) and issubclass(obj, StandIn):
        return None
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        # keep OrderedDict (state dicts); anything else dict-like becomes a dict
        out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[plain(k)] = plain(v)
        return out
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain(v) for v in obj)
    return obj


_INTERP = re.compile(r"^\$\{([^${}]+)\}$")


def resolve_interpolations(cfg: dict) -> dict:
    """Resolve omegaconf ``${a.b}`` references (absolute ones) inside a config dict.

    Example:
        >>> resolve_interpolations({"task": {"normalize": True}, "model": {"normalize": "${task.normalize}"}})
        {'task': {'normalize': True}, 'model': {'normalize': True}}
    """

    def lookup(path: str, depth: int):
        node: Any = cfg
        for part in path.strip().split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return walk(node, depth + 1)

    def walk(node, depth: int = 0):
        if depth > 20:
            return node
        if isinstance(node, str):
            m = _INTERP.match(node)
            return lookup(m.group(1), depth) if m else node
        if isinstance(node, dict):
            return {k: walk(v, depth) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, depth) for v in node]
        return node

    return walk(cfg)


# --------------------------------------------------------------------------- configs


def parse_layers(spec, what: str = "conv layers") -> list[tuple[int, int, int]]:
    """fairseq's layer string (a Python expression of lists/tuples, + and *) -> list of tuples.

    fairseq ``eval``s it; we evaluate only literals, ``+`` and ``*``.

    Example:
        >>> parse_layers("[(512, 10, 5)] + [(512, 3, 2)] * 2")
        [(512, 10, 5), (512, 3, 2), (512, 3, 2)]
    """
    if isinstance(spec, (list, tuple)):
        return [tuple(int(v) for v in x) for x in spec]
    if not isinstance(spec, str):
        raise W2VError(f"cannot read {what} {spec!r}")

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            vals = [ev(e) for e in node.elts]
            return vals if isinstance(node, ast.List) else tuple(vals)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(ast.dump(node))

    try:
        value = ev(ast.parse(spec.strip(), mode="eval"))
        return [tuple(int(v) for v in x) for x in value]
    except (SyntaxError, ValueError, TypeError) as e:
        raise W2VError(f"cannot read {what} {spec!r}: {e}") from None


def _parse_tuple(value, n: int, what: str) -> tuple:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (SyntaxError, ValueError):
            raise W2VError(f"cannot read {what} {value!r}") from None
    value = tuple(float(v) for v in value)
    if len(value) != n:
        raise W2VError(f"{what} needs {n} values, got {value!r}")
    return value


# fairseq 0.9-0.10 argparse defaults (base_wav2vec_architecture) for fields an old checkpoint lacks
_WAV2VEC_ARGPARSE_DEFAULTS = dict(
    conv_feature_layers="[(512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2)]",
    conv_aggregator_layers="[(512, 3, 1)] * 9",
    prediction_steps=12,
    num_negatives=1,
    sample_distance=None,
    cross_sample_negatives=0,
    dropout=0.0,
    dropout_features=0.0,
    dropout_agg=0.0,
    aggregator="cnn",
    skip_connections_feat=False,
    skip_connections_agg=False,
    residual_scale=0.5,
    no_conv_bias=False,
    agg_zero_pad=False,
    log_compression=False,
    balanced_classes=False,
    infonce=False,
    project_features="none",
    non_affine_group_norm=False,
    offset="auto",
    activation="relu",
    vq_type="none",
    vq_vars=320,
    vq_groups=2,
    vq_dim=0,
    vq_depth=1,
    combine_groups=False,
    vq_temp="(2.0, 0.5, 0.999995)",
    vq_gamma=0.25,
)


def wav2vec_config(model: dict, criterion: dict | None, *, old_args: bool):
    """Our :class:`~w2vtools.models.wav2vec.Wav2VecConfig` from fairseq's model (and criterion) config."""
    src = dict(_WAV2VEC_ARGPARSE_DEFAULTS) if old_args else {}
    src.update({k: v for k, v in model.items() if v is not None or k == "sample_distance"})
    names = {f.name for f in dataclasses.fields(Wav2VecConfig)}
    kw = {k: v for k, v in src.items() if k in names}
    if "conv_feature_layers" in kw:
        kw["conv_feature_layers"] = parse_layers(kw["conv_feature_layers"], "conv_feature_layers")
    if "conv_aggregator_layers" in kw:
        kw["conv_aggregator_layers"] = parse_layers(kw["conv_aggregator_layers"], "conv_aggregator_layers")
    if "vq_temp" in kw:
        kw["vq_temp"] = _parse_tuple(kw["vq_temp"], 3, "vq_temp")
    if isinstance(kw.get("offset"), str) and kw["offset"] != "auto":
        kw["offset"] = int(kw["offset"])
    criterion = criterion or {}
    if criterion.get("infonce") is not None:
        kw["infonce"] = bool(criterion["infonce"])
    if not isinstance(kw.get("infonce"), bool):
        kw["infonce"] = False
    weights = criterion.get("loss_weights")
    if isinstance(weights, str):
        weights = ast.literal_eval(weights)
    if weights is not None:
        kw["loss_weights"] = [float(w) for w in weights]
    for key in ("sample_distance",):
        if kw.get(key) is not None:
            kw[key] = int(kw[key])
    return Wav2VecConfig(**kw)


# fairseq wav2vec2 options that change what the model computes at inference and that
# our Wav2Vec2Model does not implement: (key, value fairseq uses by default)
_W2V2_UNSUPPORTED = {
    "layer_type": "transformer",
    "pos_conv_depth": 1,
    "quantize_input": False,
    "target_glu": False,
    "crop_seq_to_multiple": 1,
    "adp_num": -1,
    "pos_enc_type": "abs",
}
_W2V2_RENAMES = {"quantizer_depth": "weight_proj_depth", "quantizer_factor": "weight_proj_factor"}


def wav2vec2_config(model: dict, task: dict | None, criterion: dict | None, path: str):
    """Our Wav2Vec2Config from fairseq's model/task/criterion config (args or cfg style)."""
    for key, default in _W2V2_UNSUPPORTED.items():
        value = model.get(key, default)
        if value is not None and value != default and not (key == "attn_type" and not value):
            raise W2VError(f"{path}: wav2vec 2.0 option {key}={value!r} is not supported (only {default!r})")
    if model.get("attn_type") not in (None, "", "espnet") and model.get("attn_type"):
        raise W2VError(f"{path}: wav2vec 2.0 attention type {model['attn_type']!r} is not supported")
    names = {f.name for f in dataclasses.fields(Wav2Vec2Config)}
    kw = {}
    for key, value in model.items():
        key = _W2V2_RENAMES.get(key, key)
        if key in names and value is not None:
            kw[key] = value
    if "conv_feature_layers" in kw:
        kw["conv_feature_layers"] = parse_layers(kw["conv_feature_layers"], "conv_feature_layers")
    if "latent_temp" in kw:
        kw["latent_temp"] = _parse_tuple(kw["latent_temp"], 3, "latent_temp")
    # input normalization is a task option in fairseq (the dataset normalizes)
    normalize = (task or {}).get("normalize")
    if normalize is None:
        normalize = model.get("normalize")
    kw["normalize"] = bool(normalize) if normalize is not None else False
    weights = (criterion or {}).get("loss_weights")
    if isinstance(weights, str):
        weights = ast.literal_eval(weights)
    if weights:
        kw["diversity_weight"] = float(weights[0])
        if len(weights) > 1:
            kw["feature_pen_weight"] = float(weights[1])
    dropped = sorted(
        k for k in model if _W2V2_RENAMES.get(k, k) not in names and k not in _W2V2_UNSUPPORTED and not k.startswith("_")
    )
    if dropped:
        log.debug("%s: fairseq options without a counterpart (training-only or defaults): %s", path, ", ".join(dropped))
    int_fields = {f.name for f in dataclasses.fields(Wav2Vec2Config) if f.type in ("int", int)}
    for key in int_fields & set(kw):
        kw[key] = int(kw[key])
    try:
        return Wav2Vec2Config(**kw)
    except (TypeError, ValueError) as e:
        raise W2VError(f"{path}: cannot build a wav2vec 2.0 config: {e}") from None


# --------------------------------------------------------------------------- checkpoint reading


@dataclasses.dataclass
class FairseqCheckpoint:
    """The parts of a fairseq checkpoint we use, as plain Python.

    Attributes:
        arch: fairseq model name ("wav2vec", "wav2vec2", "wav2vec_ctc", ...).
        model: the model config (args Namespace or cfg.model, as a dict).
        task: the task config dict (``normalize``, ``labels``, ...).
        criterion: the criterion config dict (``infonce``, ``loss_weights``) or {}.
        state_dict: parameter name -> tensor as fairseq saved them.
        old_args: True for the argparse ``args`` style.
    """

    arch: str
    model: dict
    task: dict
    criterion: dict
    state_dict: dict
    old_args: bool


def _split_args(args: dict) -> tuple[dict, dict, dict]:
    """An old flat Namespace -> (model, task, criterion) dicts (all share the flat keys)."""
    crit = {k: args[k] for k in ("infonce", "loss_weights", "log_keys") if k in args}
    return args, args, crit


def read_fairseq_checkpoint(path: str | os.PathLike, map_location="cpu") -> FairseqCheckpoint:
    """Read a fairseq ``.pt`` safely and find its architecture and config.

    Example:
        >>> ck = read_fairseq_checkpoint("wav2vec_large.pt")  # doctest: +SKIP
        >>> ck.arch, ck.old_args  # doctest: +SKIP
        ('wav2vec', True)
    """
    state = safe_torch_load(path, map_location=map_location)
    if not isinstance(state, dict) or "model" not in state or not isinstance(state["model"], dict):
        raise W2VError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    args, cfg = state.get("args"), state.get("cfg")
    if isinstance(args, dict) and args:
        model, task, crit = _split_args(args)
        arch = args.get("arch") or args.get("_name")
        old = True
    elif isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        cfg = resolve_interpolations(cfg)
        model = cfg["model"]
        task = cfg.get("task") or {}
        crit = cfg.get("criterion") or {}
        arch = model.get("_name") or model.get("arch")
        old = False
    else:
        raise W2VError(f"{path}: fairseq checkpoint without 'args' or 'cfg': cannot tell the architecture")
    if not arch:
        raise W2VError(f"{path}: fairseq checkpoint does not name its model architecture")
    return FairseqCheckpoint(str(arch), model, task if isinstance(task, dict) else {}, crit or {}, state["model"], old)


def _float_state(sd: dict) -> dict:
    # fp16/bf16 checkpoints (--fp16 training, memory-efficient fp16) load as float32
    return {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in sd.items()}


def _load_weights(model: torch.nn.Module, sd: dict, path: str, what: str) -> None:
    ours = model.state_dict()
    not_tensors = [k for k in ours if k in sd and not torch.is_tensor(sd[k])]
    if not_tensors:
        raise W2VError(f"{path}: the {what} weights {few_names(not_tensors)} are not tensors")
    sd = _upgrade_weight_norm(sd, ours)
    missing = [k for k in ours if k not in sd]
    unexpected = [k for k in sd if k not in ours]
    shape = [k for k in ours if k in sd and tuple(sd[k].shape) != tuple(ours[k].shape)]
    if missing or shape:
        raise W2VError(
            f"{path}: the {what} weights do not match the architecture its config describes "
            f"(missing: {few_names(missing)}; wrong shape: {few_names(shape)})"
        )
    if unexpected:
        log.info("%s: ignoring %d fairseq weights we do not use: %s", path, len(unexpected), few_names(unexpected))
    model.load_state_dict({k: sd[k] for k in ours}, strict=True)


def _upgrade_weight_norm(sd: dict, ours: dict) -> dict:
    """Map between weight_norm's ``weight_g/weight_v`` and parametrization names if needed."""
    out = dict(sd)
    for k in list(sd):
        for old, new in ((".weight_g", ".parametrizations.weight.original0"),
                         (".weight_v", ".parametrizations.weight.original1")):
            if k.endswith(old) and k not in ours:
                cand = k[: -len(old)] + new
                if cand in ours:
                    out[cand] = out.pop(k)
            if k.endswith(new) and k not in ours:
                cand = k[: -len(new)] + old
                if cand in ours:
                    out[cand] = out.pop(k)
    return out


def _ctc_dictionary(path: Path, vocab_size: int, dictionary, task: dict) -> list[str]:
    if dictionary is None:
        # where fairseq itself looks (the task's data folder), and next to the checkpoint
        labels = str(task.get("labels") or "ltr")
        candidates = [path.parent / f"dict.{labels}.txt"]
        if task.get("data"):
            candidates.append(Path(str(task["data"])) / f"dict.{labels}.txt")
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise W2VError(
                f"{path}: a CTC fine-tuned fairseq model with {vocab_size} outputs; fairseq keeps its "
                f"dictionary in the data folder, not in the checkpoint: give the dict.{labels}.txt it was "
                f"trained with, or put it next to the checkpoint (looked in: "
                f"{', '.join(str(c.parent) for c in candidates)})"
            )
        dictionary = found[0]
        log.info("%s: using the dictionary %s", path, dictionary)
    if isinstance(dictionary, (str, os.PathLike)):
        tokens = ctc_vocabulary(read_dictionary(dictionary))
        where = str(dictionary)
    else:
        tokens = list(dictionary)
        where = "the given dictionary"
    if len(tokens) != vocab_size:
        raise W2VError(
            f"{path}: the model has {vocab_size} outputs but {where} gives {len(tokens)} "
            f"(4 specials + {len(tokens) - 4} symbols); is it the model's dict.ltr.txt?"
        )
    return tokens


def _build_encoder(arch: str, model_cfg: dict, task: dict, crit: dict, path: str, old_args: bool):
    if arch == "wav2vec":
        cfg = wav2vec_config(model_cfg, crit, old_args=old_args)
        return Wav2VecModel(cfg), cfg, cfg.family
    if arch in ("wav2vec2", "wav2vec2_base", "wav2vec2_large"):
        cfg = wav2vec2_config(model_cfg, task, crit, path)
        return Wav2Vec2Model(cfg), cfg, "wav2vec2"
    raise W2VError(
        f"{path}: fairseq model {arch!r} is not supported (wav2vec, wav2vec2 and wav2vec_ctc are)"
    )


def load_fairseq(path: str | os.PathLike, dictionary=None, map_location="cpu"):
    """Load a fairseq wav2vec / vq-wav2vec / wav2vec 2.0 (pretrained or CTC) checkpoint.

    Nothing from the pickle runs (see :func:`safe_torch_load`).

    Args:
        path: the fairseq ``.pt`` file.
        dictionary: for CTC fine-tuned models: a ``dict.ltr.txt`` path or the full
            token list (``<s> <pad> </s> <unk>`` first). Defaults to ``dict.<labels>.txt``
            next to the checkpoint, else in the task's data folder (where fairseq reads it).
        map_location: where tensors are loaded.

    Returns:
        :class:`~w2vtools.models.checkpoint.LoadedModel` (``source="fairseq"``), in eval mode.

    Raises:
        W2VError: unsafe pickle, unknown architecture, mismatched weights, or a CTC
            model without (or with the wrong) dictionary.

    Example:
        >>> m = load_fairseq("wav2vec_large.pt")  # doctest: +SKIP
        >>> m.family, m.task  # doctest: +SKIP
        ('wav2vec', 'pretrain')
    """
    path = Path(path)
    ck = read_fairseq_checkpoint(path, map_location=map_location)
    try:
        return _load_fairseq(path, ck, dictionary)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RuntimeError) as e:
        # a config field of the wrong kind, or a weight that is not a tensor: the file and the field, in one line
        what = f"field {e.args[0]!r} missing" if isinstance(e, KeyError) and e.args else " ".join(str(e).split())[:300]
        raise W2VError(f"{path}: not a loadable fairseq checkpoint ({type(e).__name__}: {what})") from None


def _load_fairseq(path: Path, ck: FairseqCheckpoint, dictionary) -> LoadedModel:
    sd = _float_state(ck.state_dict)
    if ck.arch.startswith("roberta") or ck.arch == "masked_lm":
        return _load_roberta(path, ck, sd, dictionary)
    if ck.arch in ("wav2vec_ctc",):
        w2v = ck.model.get("w2v_args")
        if not isinstance(w2v, dict) or not w2v:
            raise W2VError(
                f"{path}: this CTC checkpoint does not embed its pretrained model's config (w2v_args); "
                f"fairseq would read it from {ck.model.get('w2v_path')!r}"
            )
        if "model" in w2v and isinstance(w2v["model"], dict):  # cfg style
            w2v = resolve_interpolations(w2v)
            enc_model, enc_task, enc_crit, enc_old = w2v["model"], w2v.get("task") or {}, w2v.get("criterion") or {}, False
        else:  # old style: a flat Namespace of the pretraining args
            enc_model, enc_task, enc_crit = _split_args(w2v)
            enc_old = True
        enc_arch = enc_model.get("_name") or enc_model.get("arch") or "wav2vec2"
        enc_task = dict(enc_task)
        if ck.task.get("normalize") is not None and enc_task.get("normalize") is None:
            enc_task["normalize"] = ck.task.get("normalize")
        encoder, enc_cfg, family = _build_encoder(enc_arch, enc_model, enc_task, enc_crit, str(path), enc_old)
        proj_w = sd.get("w2v_encoder.proj.weight")
        if proj_w is None:
            raise W2VError(f"{path}: CTC checkpoint without an output layer (w2v_encoder.proj.weight)")
        vocab = int(proj_w.shape[0])
        tokens = _ctc_dictionary(path, vocab, dictionary, ck.task)
        ctc_kw = {f.name: ck.model[f.name] for f in dataclasses.fields(CTCConfig)
                  if f.name in ck.model and f.name not in ("vocab_size", "encoder", "encoder_family")
                  and ck.model[f.name] is not None}
        ctc_cfg = CTCConfig(vocab_size=vocab, **ctc_kw)
        model = CTCModel(encoder, vocab, ctc_cfg)
        mapped = {}
        for k, v in sd.items():
            if k.startswith("w2v_encoder.w2v_model."):
                mapped["encoder." + k[len("w2v_encoder.w2v_model."):]] = v
            elif k.startswith("w2v_encoder.proj."):
                mapped["proj." + k[len("w2v_encoder.proj."):]] = v
            else:
                mapped[k] = v
        # fine-tuned fairseq models drop the pretraining-only modules (quantizer, project_q, ...)
        ours = model.state_dict()
        for k in list(ours):
            if k not in mapped and k.startswith("encoder.") and _pretraining_only(k[len("encoder."):]):
                mapped[k] = ours[k]
        _load_weights(model, mapped, str(path), "CTC")
        model.eval()
        return LoadedModel(family=family, task="ctc", model=model, config=model.cfg, dictionary=tokens,
                           source="fairseq", extra={"fairseq_arch": ck.arch})
    model, cfg, family = _build_encoder(ck.arch, ck.model, ck.task, ck.criterion, str(path), ck.old_args)
    _load_weights(model, sd, str(path), family)
    model.eval()
    return LoadedModel(family=family, task="pretrain", model=model, config=cfg, dictionary=None,
                       source="fairseq", extra={"fairseq_arch": ck.arch})


# --------------------------------------------------------------------------- RoBERTa on units

# fairseq RoBERTa options our TokenTransformer does not implement: (key, the value it implements)
_ROBERTA_FIXED = {"no_scale_embedding": True, "encoder_learned_pos": True, "untie_weights_roberta": False,
                  "no_token_positional_embeddings": False}
_ROBERTA_FIELDS = {"encoder_embed_dim": "embed_dim", "encoder_ffn_embed_dim": "ffn_embed_dim",
                   "encoder_layers": "layers", "encoder_attention_heads": "attention_heads", "dropout": "dropout",
                   "attention_dropout": "attention_dropout", "activation_dropout": "activation_dropout",
                   "activation_fn": "activation_fn", "encoder_normalize_before": "layer_norm_first",
                   "layernorm_embedding": "layernorm_embedding"}


def roberta_config(model: dict, task: dict, vocab_size: int, path: str) -> UnitBertConfig:
    """Our UnitBertConfig from a fairseq RoBERTa's model and masked_lm task config.

    fairseq's ``mask_prob`` is the fraction of tokens masked, in spans of
    ``mask_multiple_length``; ours is the probability of a span start, so it is
    divided by the span length (vq-wav2vec: 0.5 / 10 = 0.05).
    """
    for key, value in _ROBERTA_FIXED.items():
        if key in model and model[key] is not None and bool(model[key]) != value:
            raise W2VError(f"{path}: RoBERTa option {key}={model[key]!r} is not supported (only {value!r})")
    kw: dict[str, Any] = {ours: model[theirs] for theirs, ours in _ROBERTA_FIELDS.items()
                          if model.get(theirs) is not None}
    kw["max_positions"] = int(model.get("max_positions") or task.get("tokens_per_sample") or 512)
    length = int(task.get("mask_multiple_length") or 1)
    kw["mask_length"] = length
    kw["mask_prob"] = float(task.get("mask_prob", 0.15)) / length
    for key in ("leave_unmasked_prob", "random_token_prob"):
        if task.get(key) is not None:
            kw[key] = float(task[key])
    try:
        return UnitBertConfig(vocab_size=vocab_size, **kw)
    except (TypeError, ValueError) as e:
        raise W2VError(f"{path}: cannot build a unit BERT config: {e}") from None


def _roberta_dictionary(path: Path, vocab_size: int, dictionary, task: dict) -> list[str]:
    """The tokens of a RoBERTa on units: specials, ``dict.txt``'s units, ``<mask>`` (fairseq's masked_lm order)."""
    if dictionary is None:
        candidates = [path.parent / "dict.txt"]
        if task.get("data"):
            candidates.append(Path(str(task["data"]).split(":")[0]) / "dict.txt")
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise W2VError(
                f"{path}: a fairseq RoBERTa with {vocab_size} tokens; fairseq keeps its dictionary in the data "
                f"folder, not in the checkpoint: put the dict.txt it was trained with next to the checkpoint "
                f"(looked in: {', '.join(str(c.parent) for c in candidates)})")
        dictionary = found[0]
    tokens = unit_vocabulary(read_dictionary(dictionary)) if isinstance(dictionary, (str, os.PathLike)) \
        else list(dictionary)
    if len(tokens) != vocab_size:
        raise W2VError(f"{path}: the model has {vocab_size} tokens but {dictionary} gives {len(tokens)} "
                       f"(4 specials + {len(tokens) - 5} units + <mask>); is it the model's dict.txt?")
    return tokens


def _upgrade_roberta_keys(sd: dict) -> dict:
    """fairseq's own upgrades of older RoBERTa files: ``emb_layer_norm`` and fused ``in_proj`` weights."""
    out = {}
    for k, v in sd.items():
        k = k.replace(".emb_layer_norm.", ".layernorm_embedding.")
        if ".self_attn.in_proj_" in k:
            kind = k.rsplit("_", 1)[1]  # weight | bias
            for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                out[k.replace(f"in_proj_{kind}", f"{name}.{kind}")] = part
            continue
        out[k] = v
    return out


def _load_roberta(path: Path, ck: FairseqCheckpoint, sd: dict, dictionary) -> LoadedModel:
    sd = _upgrade_roberta_keys(sd)
    embed = sd.get("encoder.sentence_encoder.embed_tokens.weight")
    if embed is None:
        raise W2VError(f"{path}: a RoBERTa checkpoint without encoder.sentence_encoder.embed_tokens.weight")
    tokens = _roberta_dictionary(path, int(embed.shape[0]), dictionary, ck.task)
    cfg = roberta_config(ck.model, ck.task, len(tokens), str(path))
    model = TokenTransformer(cfg)
    mapped = {}
    for k, v in sd.items():
        for prefix in ("encoder.sentence_encoder.", "encoder."):
            if k.startswith(prefix):
                mapped[k[len(prefix):]] = v
                break
    mapped.setdefault("lm_head.weight", mapped.get("embed_tokens.weight"))  # tied
    _load_weights(model, mapped, str(path), "RoBERTa")
    model.eval()
    return LoadedModel(family="unit-bert", task="pretrain", model=model, config=cfg, dictionary=tokens,
                       source="fairseq", extra={"fairseq_arch": ck.arch})


_PRETRAINING_ONLY = ("quantizer.", "project_q.", "final_proj.", "target_glu.", "mask_emb", "project_inp.",
                     "input_quantizer.")


def _pretraining_only(name: str) -> bool:
    return name.startswith(_PRETRAINING_ONLY)


__all__ = [
    "FairseqCheckpoint",
    "RestrictedUnpickler",
    "StandIn",
    "load_fairseq",
    "parse_layers",
    "plain",
    "read_fairseq_checkpoint",
    "resolve_interpolations",
    "safe_torch_load",
]
