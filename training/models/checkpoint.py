"""Checkpoint readers, filters and strict loaders for Clay encoders and seed segmenters.

Official ``clay-v1.5.ckpt`` files are Lightning checkpoints of 5.16 GB: encoder, decoder, a
DINOv2 teacher and optimizer state, plus whatever Lightning pickled beside them
(``AttributeDict``, omegaconf or jsonargparse configs, paths, callback state). We only ever
need ``model.encoder.*`` (and, for the seed's Chesapeake checkpoint, its head).

Reading (:mod:`training.models.checkpoint_file`): the pickle is read by a restricted unpickler that
imports and runs nothing from the file; tensors stay lazy records until the caller picks
them. Only the picked storages are read (straight into the tensors' own memory from local
files, by ranged GETs from ``s3://`` objects), so peak memory stays near the size of what is
kept, not the file's; ``data.pkl`` and each storage are bounded by what the file declares.
Classes a checkpoint pickles that are not on the built-in list can be accepted as inert data
with ``allow_classes`` (the ``model.checkpoint_allow_classes`` config key); they are still
never imported. Legacy (pre-1.6) torch files go through ``torch.load(weights_only=True)``;
safetensors files through ``safe_open`` (only the picked keys). Remote files of those two
formats, and re-zipped checkpoints with compressed members, are first copied to local disk
(streamed; the error says how much room that needs).

Strictness: any missing, unexpected or wrong-shape key raises a :class:`CheckpointMismatchError`
that names every offending key, because a silently half-loaded foundation model trains fine
and predicts garbage. Its subclasses say what went wrong: :class:`PresetMismatchError` (a
Clay checkpoint of another preset) and :class:`ArchitectureMismatchError` (not a Clay
checkpoint). Reading failures are :class:`TruncatedCheckpointError`,
:class:`NotACheckpointError`, :class:`UnsafeCheckpointError`, :class:`OversizedCheckpointError`
and :class:`InsufficientDiskError`, all :class:`CheckpointError` (a ``ValueError``).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from training.models import checkpoint_file
from training.models.checkpoint_errors import (
    CheckpointError,
    InsufficientDiskError,
    NotACheckpointError,
    OversizedCheckpointError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
)
from training.models.unpickler import LazyTensor, OpaqueObject, OpaqueTensor

__all__ = [
    "ENCODER_PREFIX",
    "SEED_HEAD_KEYS",
    "ArchitectureMismatchError",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointStateDict",
    "InsufficientDiskError",
    "NotACheckpointError",
    "OpaqueObject",
    "OversizedCheckpointError",
    "PresetMismatchError",
    "TruncatedCheckpointError",
    "UnsafeCheckpointError",
    "check_state_dict",
    "checkpoint_filter_fn",
    "load_encoder",
    "load_encoder_state_dict",
    "load_seed_segmenter",
    "load_state_dict_file",
    "load_strict",
    "seed_to_segmenter_state_dict",
]

log = logging.getLogger(__name__)

ENCODER_PREFIX = "model.encoder."
#: Head modules of the seed's Chesapeake checkpoint (``model.<name>.*``).
SEED_HEAD_KEYS: tuple[str, ...] = ("conv1", "bn1", "conv2", "bn2", "conv_ps", "conv_out")
#: Keys every Clay encoder state dict has (prefix stripped): how a Clay checkpoint is recognised.
_CLAY_SIGNATURE = ("cls_token", "patch_embedding.")

StateDict = dict[str, torch.Tensor]


class CheckpointStateDict(dict):
    """A state dict that remembers the file it came from (``source``), for error messages."""

    source: str | None = None


def _with_source(state: dict, source: str | None) -> CheckpointStateDict:
    out = CheckpointStateDict(state)
    out.source = source
    return out


def _shape(value: object) -> list[int]:
    return list(getattr(value, "shape", []))


class CheckpointMismatchError(CheckpointError):
    """A state dict does not match the model key for key. Lists every offending key."""

    hint = "check the preset (tiny/small/base/large) and that the file is a Clay encoder checkpoint"

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        what: str = "model",
        source: str | None = None,
        expected: Mapping[str, tuple[int, ...]] | None = None,
        extra: str = "",
    ) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        self.source, self.what = source, what
        self.expected = dict(expected or {})
        head = f"state dict of {source}" if source else "state dict"
        lines = [f"{head} does not match the {what}:"]
        if extra:
            lines.append("  " + extra)
        if missing:
            shown = [f"{k} {list(self.expected[k])}" if k in self.expected else k for k in missing]
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(shown))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        for key, got, want in mismatched:
            lines.append(f"  wrong shape: {key}: checkpoint {list(got)} vs model {list(want)}")
        lines.append(self.hint)
        super().__init__("\n".join(lines))


class PresetMismatchError(CheckpointMismatchError):
    """A Clay checkpoint of another preset than the model's (e.g. ``small`` into ``large``)."""

    def __init__(
        self, *args: object, model_preset: str | None = None, fits: str | None = None, **kwargs: object
    ) -> None:
        self.model_preset, self.fits = model_preset, fits
        self.hint = f"the checkpoint is a Clay '{fits}' model; build the model with preset={fits!r} (model={fits} in the config)"
        super().__init__(
            *args,
            extra=f"the model is preset {model_preset!r}, the checkpoint fits preset {fits!r}",
            **kwargs,
        )  # type: ignore[arg-type]


class ArchitectureMismatchError(CheckpointMismatchError):
    """The checkpoint holds another architecture (no Clay encoder keys, or mostly foreign ones)."""

    hint = (
        "this is not a checkpoint of this architecture: a Clay v1.5 Lightning checkpoint keeps its "
        "encoder under model.encoder.*; an encoder-only file has cls_token, "
        "patch_embedding.* and transformer.* at top level"
    )


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """An opened checkpoint: its flat state dict with values still lazy, and a reader."""

    uri: str
    state: Mapping[str, object]
    read: Callable[[Mapping[str, object]], StateDict]
    raw: object = None


class _ShapeOnly:
    """A safetensors entry not yet read: only its shape."""

    def __init__(self, shape: list[int]) -> None:
        self.shape = torch.Size(shape)


def _flat_state_dict(raw: object, source: str) -> Mapping[str, object]:
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else None
    if not isinstance(state, Mapping):
        raise NotACheckpointError(
            f"{source} holds no state dict (expected a mapping of tensors or a 'state_dict' key; "
            f"found {type(raw).__name__})"
        )
    return state


def _materialize(ckpt: checkpoint_file.CheckpointFile, picked: Mapping[str, object]) -> StateDict:
    lazy = {
        k: v
        for k, v in picked.items()
        if isinstance(v, LazyTensor | OpaqueTensor) or not isinstance(v, torch.Tensor)
    }
    # copy=True: tensors handed out of this module are ordinary writable memory (a model may
    # train them); the checkpoint reader's read-only maps never leave it. Peak = what is kept.
    out = ckpt.materialize_all(lazy, copy=True)
    return {k: out.get(k, v) for k, v in picked.items()}  # type: ignore[misc]


@contextmanager
def _open_source(path_or_uri: str | os.PathLike[str], allow_classes: Iterable[str] = ()) -> Iterator[_Source]:
    uri = str(path_or_uri)
    kind = checkpoint_file.sniff(uri)
    if kind == "zip":
        with ExitStack() as stack:
            ckpt = stack.enter_context(checkpoint_file.open_checkpoint(uri, allow_classes))
            if not ckpt.in_place:  # compressed members cannot be ranged-read: copy, then map
                local = stack.enter_context(checkpoint_file.local_copy(uri))
                ckpt = stack.enter_context(checkpoint_file.open_checkpoint(local, allow_classes))
                ckpt.source = uri
            yield _Source(
                uri, _flat_state_dict(ckpt.obj, uri), lambda picked: _materialize(ckpt, picked), ckpt.obj
            )
            log.info("%s: read %.1f MB of %.1f MB", uri, ckpt.bytes_read / 1e6, ckpt.size / 1e6)
        return
    if kind == "legacy":
        with checkpoint_file.local_copy(uri) as local:
            try:
                raw = torch.load(local, weights_only=True, map_location="cpu")
            except pickle.UnpicklingError as exc:
                raise NotACheckpointError(
                    f"{uri} is a legacy (pre-1.6, non-zip) torch file that pickles more than tensors, "
                    f"which only the zip format can be read safely with; re-save it with a current torch ({exc})"
                ) from exc
            yield _Source(uri, _flat_state_dict(raw, uri), dict, raw)
        return
    if kind == "safetensors":
        from safetensors import safe_open

        with (
            checkpoint_file.local_copy(uri) as local,
            safe_open(str(local), framework="pt", device="cpu") as f,
        ):
            state = {k: _ShapeOnly(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
            yield _Source(uri, state, lambda picked: {k: f.get_tensor(k) for k in picked})
        return
    raise NotACheckpointError(checkpoint_file._not_zip_message(uri, kind, _size(uri)))


def _size(uri: str) -> int:
    from core import storage

    fs, path = storage.filesystem(uri)
    return int(fs.size(path))


def _replace_lazy(obj: object, tensors: Mapping[int, torch.Tensor], seen: set[int]) -> object:
    if isinstance(obj, LazyTensor):
        return tensors[id(obj)]
    if id(obj) in seen:
        return obj
    seen.add(id(obj))
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = _replace_lazy(v, tensors, seen)
    elif isinstance(obj, list):
        obj[:] = [_replace_lazy(v, tensors, seen) for v in obj]
    elif isinstance(obj, tuple):
        return (
            type(obj)(*(_replace_lazy(v, tensors, seen) for v in obj))
            if hasattr(obj, "_fields")
            else tuple(_replace_lazy(v, tensors, seen) for v in obj)
        )
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        for k, v in list(vars(obj).items()):
            vars(obj)[k] = _replace_lazy(v, tensors, seen)
    return obj


def _collect_lazy(obj: object, found: dict[int, LazyTensor], seen: set[int]) -> None:
    if isinstance(obj, LazyTensor):
        found[id(obj)] = obj
        return
    if id(obj) in seen or isinstance(obj, str | bytes | int | float | type):
        return
    seen.add(id(obj))
    if isinstance(obj, dict):
        values: Iterable[object] = obj.values()
    elif isinstance(obj, list | tuple | set | frozenset):
        values = obj
    else:
        values = ()
    for v in values:
        _collect_lazy(v, found, seen)
    if hasattr(obj, "__dict__"):
        for v in vars(obj).values():
            _collect_lazy(v, found, seen)


def load_state_dict_file(
    path_or_uri: str | os.PathLike[str], allow_classes: Iterable[str] = ()
) -> Mapping[str, object]:
    """The whole top-level object of a ``.ckpt``/``.pt``/``.pth`` or ``.safetensors`` file.

    Every tensor in it is materialised into ordinary (writable) memory: the whole file's
    tensors are read, so prefer :func:`load_encoder_state_dict` for large checkpoints. Classes pickled beside the tensors become inert
    stand-ins (:mod:`training.models.unpickler`); nothing from the file is run. To read only
    the encoder, use :func:`load_encoder_state_dict`.
    """
    with _open_source(path_or_uri, allow_classes) as src:
        if src.raw is None:  # safetensors
            return src.read(src.state)
        found: dict[int, LazyTensor] = {}
        try:
            _collect_lazy(src.raw, found, set())
        except RecursionError as exc:  # a pickle can nest deeper than Python can walk
            raise OversizedCheckpointError(f"{src.uri}: its objects nest too deeply to read") from exc
        if not found:
            return src.raw  # type: ignore[return-value]
        named = {str(i): t for i, t in found.items()}
        tensors = src.read(named)
        return _replace_lazy(src.raw, {int(k): v for k, v in tensors.items()}, set())  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Pure filters
# --------------------------------------------------------------------------------------------


def checkpoint_filter_fn(state_dict: Mapping[str, object]) -> StateDict:
    """Encoder entries with their prefix stripped, from any supported layout.

    Detected from the keys (values are passed through, lazy or not):

    - Lightning checkpoints of Clay or the seed (``model.encoder.*``; decoder, teacher, proj
      and head keys are dropped without being read);
    - our segmenter's state dict (``encoder.*``);
    - a bare encoder state dict (``cls_token``, ``patch_embedding.*``, ``transformer.*``).
    """
    keys = list(state_dict)
    out: dict = dict(state_dict)
    for prefix in (ENCODER_PREFIX, "encoder."):
        if any(k.startswith(prefix) for k in keys):
            out = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            break
    source = getattr(state_dict, "source", None)
    return _with_source(out, source) if source else out


def seed_to_segmenter_state_dict(state_dict: Mapping[str, object]) -> StateDict:
    """Map the seed's ``model.encoder.*`` / ``model.<head>.*`` keys onto ``ClaySegmenter`` keys.

    Keys outside ``model.`` (loss or metric buffers of the old LightningModule) are dropped;
    any other ``model.*`` key is kept under its own name so the strict load reports it.
    """
    out: StateDict = {}
    for key, value in state_dict.items():
        if not key.startswith("model."):
            continue
        name = key[len("model.") :]
        if name.startswith("encoder."):
            out[name] = value  # type: ignore[assignment]
        elif name.split(".", 1)[0] in SEED_HEAD_KEYS:
            out["head." + name] = value  # type: ignore[assignment]
        else:
            out[name] = value  # type: ignore[assignment]
    return out


def _is_clay_encoder(state: Mapping[str, object]) -> bool:
    return "cls_token" in state and any(k.startswith("patch_embedding.") for k in state)


def _expected_clay_shapes(preset: str = "large") -> dict[str, tuple[int, ...]]:
    from training.models.clay import build_encoder

    return {k: tuple(v.shape) for k, v in build_encoder(preset, device="meta").state_dict().items()}


def _not_clay(source: str, state: Mapping[str, object], what: str) -> ArchitectureMismatchError:
    expected = _expected_clay_shapes("large")
    sample = ", ".join(f"{k} {_shape(v)}" for k, v in list(state.items())[:6])
    wanted = ", ".join(f"{ENCODER_PREFIX}{k} {list(v)}" for k, v in list(expected.items())[:4])
    return ArchitectureMismatchError(
        [],
        [],
        [],
        what,
        source,
        extra=(
            f"no Clay encoder keys in its {len(state)} tensors (e.g. {sample or 'none'}); "
            f"expected keys such as {wanted} (preset large)"
        ),
    )


def load_encoder_state_dict(
    path_or_uri: str | os.PathLike[str], allow_classes: Iterable[str] = ()
) -> StateDict:
    """Encoder-only state dict (prefix stripped) from a Lightning ``.ckpt``, a ``.pt`` or a
    ``.safetensors`` file, local or remote. Only the encoder's tensors are ever read.

    ``allow_classes`` names extra pickled classes (``module.Class``) to accept as inert data.
    Raises :class:`ArchitectureMismatchError` when the file holds no Clay encoder.
    """
    with _open_source(path_or_uri, allow_classes) as src:
        picked = checkpoint_filter_fn(src.state)
        if not _is_clay_encoder(picked):
            raise _not_clay(src.uri, src.state, "Clay encoder")
        return _with_source(src.read(picked), src.uri)


# --------------------------------------------------------------------------------------------
# Strict loading
# --------------------------------------------------------------------------------------------


def _diff(model: nn.Module, state_dict: Mapping[str, object]) -> tuple[list[str], list[str], list, dict]:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    mismatched = [
        (k, tuple(_shape(state_dict[k])), expected[k])
        for k in expected
        if k in state_dict and tuple(_shape(state_dict[k])) != expected[k]
    ]
    return missing, unexpected, mismatched, expected


def _model_preset(model: nn.Module) -> str | None:
    encoder = getattr(model, "encoder", model)
    return getattr(getattr(encoder, "config", None), "preset", None)


def check_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, object],
    what: str = "model",
    build_preset: Callable[[str], nn.Module] | None = None,
) -> None:
    """Raise a :class:`CheckpointMismatchError` unless keys and shapes match ``model`` exactly.

    Values only need a ``shape`` (lazy tensors are checked without being read).
    ``build_preset(name)`` builds the same model for another preset on the meta device; when
    one fits the checkpoint exactly the error is a :class:`PresetMismatchError`. When fewer
    than half of the model's keys are there it is an :class:`ArchitectureMismatchError`.
    """
    missing, unexpected, mismatched, expected = _diff(model, state_dict)
    if not (missing or unexpected or mismatched):
        return
    source = getattr(state_dict, "source", None)
    args = (missing, unexpected, mismatched, what, source, expected)
    if build_preset is not None:
        from training.models.clay import PRESETS

        for name in PRESETS:
            if name == _model_preset(model):
                continue
            other = _diff(build_preset(name), state_dict)
            if not (other[0] or other[1] or other[2]):
                raise PresetMismatchError(*args, model_preset=_model_preset(model), fits=name)
    present = sum(1 for k in expected if k in state_dict)
    if present < len(expected) / 2:
        raise ArchitectureMismatchError(
            *args, extra=f"only {present} of the model's {len(expected)} keys are in the checkpoint"
        )
    raise CheckpointMismatchError(*args)


def load_strict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    what: str = "model",
    build_preset: Callable[[str], nn.Module] | None = None,
) -> nn.Module:
    """Strict, shape-checked load. Models built on the meta device take the tensors as they
    are (``assign=True``: no second copy, memory-mapped tensors stay mapped)."""
    check_state_dict(model, state_dict, what, build_preset)
    on_meta = any(t.is_meta for t in model.state_dict().values())
    model.load_state_dict(state_dict, strict=True, assign=on_meta)
    return model


def load_encoder(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load an encoder state dict into a :class:`~training.models.clay.ClayEncoder` strictly.

    Accepts any layout :func:`checkpoint_filter_fn` understands. Raises
    :class:`CheckpointMismatchError` (or :class:`PresetMismatchError` /
    :class:`ArchitectureMismatchError`) naming every missing, unexpected or wrong-shape key.
    """
    from training.models.clay import build_encoder

    return load_strict(
        model, checkpoint_filter_fn(state_dict), "Clay encoder", lambda p: build_encoder(p, device="meta")
    )


def load_seed_segmenter(
    path_or_uri: str | os.PathLike[str],
    preset: str = "large",
    device: str | torch.device = "cpu",
    allow_classes: Iterable[str] = (),
) -> nn.Module:
    """A :class:`~training.models.head.ClaySegmenter` holding the seed checkpoint's weights.

    The head width and class count are read from the checkpoint's ``conv1``/``conv_out``.
    Keys and shapes are checked before any tensor is read; then only ``model.encoder.*`` and
    the head are read, and the meta-built model takes them directly.
    """
    from training.models.head import build_segmenter

    what = "seed Chesapeake segmenter"
    with _open_source(path_or_uri, allow_classes) as src:
        state = _with_source(seed_to_segmenter_state_dict(src.state), src.uri)
        encoder_part = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
        if not _is_clay_encoder(encoder_part):
            raise _not_clay(src.uri, src.state, what)
        for key in ("head.conv1.weight", "head.conv_out.weight"):
            if key not in state:
                raise ArchitectureMismatchError(
                    [key],
                    [],
                    [],
                    what,
                    src.uri,
                    extra="no seed Chesapeake head (model.conv1/.../conv_out.*) in it",
                )
        width = int(_shape(state["head.conv1.weight"])[0])
        num_classes = int(_shape(state["head.conv_out.weight"])[0])

        def build(p: str) -> nn.Module:
            return build_segmenter(p, num_classes=num_classes, head_width=width, device="meta")

        model = build(preset)
        check_state_dict(model, state, what, build)  # before reading any tensor
        load_strict(model, _with_source(src.read(state), src.uri), what)
    return model.to(device).eval()
