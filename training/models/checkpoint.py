"""Pure checkpoint filters and strict loaders for Clay encoders and seed segmenters.

Official ``clay-v1.5.ckpt`` files are Lightning checkpoints of 5 GB: encoder, decoder, a DINOv2
teacher and optimizer state. We only ever need ``model.encoder.*``. ``torch.load(mmap=True)``
maps the file instead of reading it, so the tensors we drop are never paged in; loading into a
model built on the meta device with ``assign=True`` then keeps peak memory near the encoder's
own size. (The seed Lambda read the whole file and ran out of memory.)

Strictness: any missing, unexpected or wrong-shape key raises one :class:`CheckpointMismatchError`
that names every offending key, because a silently half-loaded foundation model trains fine
and predicts garbage.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from training import storage

__all__ = [
    "ENCODER_PREFIX",
    "SEED_HEAD_KEYS",
    "CheckpointMismatchError",
    "checkpoint_filter_fn",
    "load_encoder",
    "load_encoder_state_dict",
    "load_seed_segmenter",
    "load_state_dict_file",
    "seed_to_segmenter_state_dict",
]

ENCODER_PREFIX = "model.encoder."
#: Head modules of the seed's Chesapeake checkpoint (``model.<name>.*``).
SEED_HEAD_KEYS: tuple[str, ...] = ("conv1", "bn1", "conv2", "bn2", "conv_ps", "conv_out")

StateDict = dict[str, torch.Tensor]


class CheckpointMismatchError(ValueError):
    """A state dict does not match the model key for key. Lists every offending key."""

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        what: str = "model",
    ) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"state dict does not match the {what}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        for key, got, want in mismatched:
            lines.append(f"  wrong shape: {key}: checkpoint {list(got)} vs model {list(want)}")
        lines.append(
            "check the preset (tiny/small/base/large) and that the file is a Clay encoder checkpoint"
        )
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def _local_copy(path_or_uri: str | os.PathLike[str]) -> tuple[Path, bool]:
    """A local path for the file; downloads remote URIs to a temp file (returns is_temp)."""
    local = storage.local_path(str(path_or_uri))
    if local is not None:
        if not local.exists():
            raise FileNotFoundError(f"no checkpoint at {path_or_uri}")
        return local, False
    suffix = Path(str(path_or_uri)).suffix
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="ckpt-")
    os.close(fd)
    storage.download(str(path_or_uri), tmp)
    return Path(tmp), True


class OpaqueObject(dict):
    """Inert stand-in for a non-tensor class pickled in a checkpoint (e.g. ``box.Box`` or a
    ``Path`` in Lightning's ``hyper_parameters``). It records its arguments and state and runs
    no code of the original class, so ``weights_only`` loading stays safe."""

    qualname = "?"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__()
        self.__dict__["args"] = args

    def __setstate__(self, state: object) -> None:
        self.__dict__["state"] = state

    def __repr__(self) -> str:
        return f"<opaque {self.qualname}>"


def _opaque_class(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (OpaqueObject,), {"qualname": qualname})


def _torch_load(path: Path, mmap: bool) -> Mapping[str, object]:
    import pickle

    try:
        return torch.load(path, mmap=mmap, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        if not unsafe:
            raise
    # Non-tensor objects (hyper-parameters) that we never use: map each to an inert stand-in.
    try:
        with torch.serialization.safe_globals([(_opaque_class(name), name) for name in unsafe]):
            return torch.load(path, mmap=mmap, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path} pickles objects that cannot be loaded safely ({', '.join(unsafe)}). On a machine "
            "where you trust the file, save just the weights, e.g. torch.save(torch.load(path, "
            "weights_only=False)['state_dict'], 'weights.pt'), and load that instead"
        ) from exc


def load_state_dict_file(path: str | os.PathLike[str]) -> Mapping[str, object]:
    """The raw top-level mapping of a ``.ckpt``/``.pt``/``.pth`` or ``.safetensors`` file.

    Torch files are memory-mapped (``mmap=True, weights_only=True``): tensors are read lazily,
    so tensors the caller drops cost no memory. Classes pickled beside the tensors (Lightning
    ``hyper_parameters``) become inert :class:`OpaqueObject` stand-ins instead of failing the
    ``weights_only`` load; nothing from the file is executed. Safetensors files are returned
    as a flat dict.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return _torch_load(path, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc) and "zip" not in str(exc):
            raise
        # Legacy (non-zip) torch files cannot be memory-mapped.
        return _torch_load(path, mmap=False)


def _flat_state_dict(raw: Mapping[str, object], source: str) -> Mapping[str, object]:
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{source} holds no state dict (expected a mapping of tensors or a 'state_dict' key)"
        )
    return state


# --------------------------------------------------------------------------------------------
# Pure filters
# --------------------------------------------------------------------------------------------


def checkpoint_filter_fn(state_dict: Mapping[str, object]) -> StateDict:
    """Encoder tensors with their prefix stripped, from any supported layout.

    Detected from the keys:

    - Lightning checkpoints of Clay or the seed (``model.encoder.*``; decoder, teacher, proj
      and head keys are dropped without being read);
    - our segmenter's state dict (``encoder.*``);
    - a bare encoder state dict (``cls_token``, ``patch_embedding.*``, ``transformer.*``).
    """
    keys = list(state_dict)
    for prefix in (ENCODER_PREFIX, "encoder."):
        if any(k.startswith(prefix) for k in keys):
            return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}  # type: ignore[misc]
    return dict(state_dict)  # type: ignore[arg-type]


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


def load_encoder_state_dict(path_or_uri: str | os.PathLike[str]) -> StateDict:
    """Encoder-only state dict (prefix stripped) from a Lightning ``.ckpt``, a ``.pt`` or a
    ``.safetensors`` file, local or remote. Only ``model.encoder.*`` tensors are ever read."""
    local, is_temp = _local_copy(path_or_uri)
    try:
        return checkpoint_filter_fn(_flat_state_dict(load_state_dict_file(local), str(path_or_uri)))
    finally:
        if is_temp:
            local.unlink(missing_ok=True)  # mmapped pages stay valid after unlink on POSIX


# --------------------------------------------------------------------------------------------
# Strict loading
# --------------------------------------------------------------------------------------------


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "model") -> None:
    """Raise :class:`CheckpointMismatchError` unless keys and shapes match ``model`` exactly."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    mismatched = [
        (k, tuple(state_dict[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, what)


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "model") -> nn.Module:
    """Strict, shape-checked load. Models built on the meta device take the tensors as they
    are (``assign=True``: no second copy, memory-mapped tensors stay mapped)."""
    check_state_dict(model, state_dict, what)
    on_meta = any(t.is_meta for t in model.state_dict().values())
    model.load_state_dict(state_dict, strict=True, assign=on_meta)
    return model


def load_encoder(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load an encoder state dict into a :class:`~training.models.clay.ClayEncoder` strictly.

    Accepts any layout :func:`checkpoint_filter_fn` understands. Raises
    :class:`CheckpointMismatchError` naming every missing, unexpected or wrong-shape key.
    """
    return load_strict(model, checkpoint_filter_fn(state_dict), "Clay encoder")


def load_seed_segmenter(
    path_or_uri: str | os.PathLike[str], preset: str = "large", device: str | torch.device = "cpu"
) -> nn.Module:
    """A :class:`~training.models.head.ClaySegmenter` holding the seed checkpoint's weights.

    The head width and class count are read from the checkpoint's ``conv1``/``conv_out``.
    The model is built on the meta device and takes the (memory-mapped) tensors directly.
    """
    from training.models.head import build_segmenter

    local, is_temp = _local_copy(path_or_uri)
    try:
        state = seed_to_segmenter_state_dict(_flat_state_dict(load_state_dict_file(local), str(path_or_uri)))
    finally:
        if is_temp:
            local.unlink(missing_ok=True)
    for key in ("head.conv1.weight", "head.conv_out.weight"):
        if key not in state:
            raise CheckpointMismatchError([key], [], [], "seed Chesapeake segmenter")
    width = int(state["head.conv1.weight"].shape[0])
    num_classes = int(state["head.conv_out.weight"].shape[0])
    model = build_segmenter(preset, num_classes=num_classes, head_width=width, device="meta")
    load_strict(model, state, "seed Chesapeake segmenter")
    return model.to(device).eval()
