"""A 5 GB+ checkpoint with the large encoder's official keys loads under a 3 GiB address-space
limit (``prlimit --as``), adding a peak RSS near the encoder's 1.25 GB (<= 1.5 GB).

RLIMIT_AS counts mapped address space, so this fails for any reader that maps the whole file
(as a private writable map did) and passes only when just the wanted storages are read. The
checkpoint is sparse (see :mod:`tests.models.ckpt_builders`): no disk, a second to write.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.models.ckpt_builders import contiguous, torch_pickle, write_sparse_zip

REPO = Path(__file__).resolve().parents[2]
KEYS = json.loads((REPO / "tests/data/clay_v15_state_dict.json").read_text())["encoder"]
GB = 1 << 30
AS_LIMIT = 3 * GB  # a bare `import torch` child maps ~0.63 GB of address space (CPU torch)
#: What loading the large encoder (1.25 GB of fp32) may add to the child's RSS.
PEAK_GROWTH_LIMIT = 1.5e9
EXTRA = {"model.teacher.blob": 2 * GB, "model.decoder.blob": GB, "optim.exp_avg": GB}


def _build(path: Path) -> dict[str, float]:
    """The sparse checkpoint; returns each encoder tensor's expected sum."""
    rng = np.random.default_rng(0)
    state, sizes, fill, sums = {}, {}, {}, {}
    for i, (key, shape) in enumerate(KEYS.items()):
        numel = int(np.prod(shape))
        head = rng.standard_normal(min(numel, 1024), dtype=np.float32)  # the rest is zeros
        state[f"model.encoder.{key}"] = contiguous(str(i), shape)
        sizes[str(i)], fill[str(i)], sums[key] = (
            numel * 4,
            head.tobytes(),
            float(head.astype(np.float64).sum()),
        )
    for j, (key, nbytes) in enumerate(EXTRA.items()):
        state[key] = contiguous(f"x{j}", [nbytes // 4])
        sizes[f"x{j}"] = nbytes
    exp_avg = state.pop("optim.exp_avg")
    ckpt = {"state_dict": state, "optimizer_states": [{"state": {0: {"exp_avg": exp_avg}}}], "epoch": 3}
    write_sparse_zip(path, torch_pickle(ckpt), sizes, fill)
    return sums


_CHILD = """
import json, sys
import torch
from training.models import unpickler
from training.models.checkpoint import load_encoder, load_encoder_state_dict
from training.models.clay import build_encoder

def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) * 1024

path = sys.argv[1]
out = {"base_rss": status("VmRSS"), "base_vsz": status("VmSize")}
# The loaders' path: tensors copied into writable memory, the model built on meta takes them.
encoder = load_encoder(build_encoder("large", device="meta"), load_encoder_state_dict(path))
params = encoder.state_dict()
params["cls_token"].add_(0)  # writable: a model may train them
out["peak_rss"], out["peak_vsz"] = status("VmHWM"), status("VmPeak")  # the load's own peak
out["sums"] = {k: float(v.sum(dtype=torch.float64)) for k, v in params.items()}
del encoder, params
# The unpickler's own path: read-only shared maps of only the encoder's byte ranges.
with unpickler.open_checkpoint(path) as ckpt:
    lazy = {k: v for k, v in ckpt.obj["state_dict"].items() if k.startswith("model.encoder.")}
    mapped = ckpt.materialize_all(lazy)
    out["mapped_sums"] = {k[len("model.encoder."):]: float(v.double().sum()) for k, v in mapped.items()}
    out["mapped_peak_vsz"] = status("VmPeak")
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux prlimit")
def test_five_gb_checkpoint_loads_the_large_encoder_under_an_address_space_limit(tmp_path: Path) -> None:
    path = tmp_path / "clay-large-sparse.ckpt"
    expected = _build(path)
    size = path.stat().st_size
    assert size > 5e9 and path.stat().st_blocks * 512 < 0.01 * size  # big, and sparse on disk
    out = subprocess.run(
        ["prlimit", f"--as={AS_LIMIT}", sys.executable, "-c", textwrap.dedent(_CHILD), str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row.pop("sums") == pytest.approx(expected, rel=1e-6, abs=1e-4)
    assert row.pop("mapped_sums") == pytest.approx(expected, rel=1e-6, abs=1e-4)
    print(
        f"\nfile {size / 1e9:.2f} GB under RLIMIT_AS {AS_LIMIT / 1e9:.2f} GB: "
        + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in row.items())
    )
    kept = 4 * sum(int(np.prod(v)) for v in KEYS.values())
    growth = row["peak_rss"] - row["base_rss"]
    assert growth <= PEAK_GROWTH_LIMIT and growth < 1.1 * kept, f"growth {growth / 1e6:.0f} MB"
    assert row["peak_vsz"] < size  # the file was never mapped whole


def _maps_of(path: Path) -> list[str]:
    """This process's mappings of ``path``: their permission fields (``r--s``: read-only, shared)."""
    with open("/proc/self/maps") as f:
        return [line.split()[1] for line in f if line.rstrip().endswith(str(path))]


def test_storages_are_read_only_shared_maps_of_their_ranges_and_loaders_copy(tmp_path: Path) -> None:
    import warnings

    import torch

    from tests.models.fakes import write_clay_pretrain_ckpt
    from training.models import unpickler
    from training.models.checkpoint import load_encoder_state_dict

    path = tmp_path / "tiny.ckpt"
    source = write_clay_pretrain_ckpt(path, "tiny").state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "buffer is not writable" warning stays inside
        with unpickler.open_checkpoint(path) as ckpt:
            lazy = {k: v for k, v in ckpt.obj["state_dict"].items() if k.startswith("model.encoder.")}
            mapped = ckpt.materialize_all(lazy)
            perms = _maps_of(path)
            assert perms and set(perms) == {"r--s"}  # never private or writable
            assert len(perms) >= len({v.storage.key for v in lazy.values()})  # one small map each
            for key, value in source.items():
                assert torch.equal(mapped[f"model.encoder.{key}"], value)
            copied = ckpt.materialize_all(lazy, copy=True)  # not the cached maps
            assert len(_maps_of(path)) == len(perms)
            assert torch.equal(copied["model.encoder.cls_token"], mapped["model.encoder.cls_token"])
        del ckpt, mapped, copied  # the maps go with the last tensor and the file's cache
        assert _maps_of(path) == []
        state = load_encoder_state_dict(path)
    assert _maps_of(path) == []  # the loaders' tensors are copies: nothing of the file stays mapped
    for key, value in state.items():
        assert torch.equal(value, source[key])
        value.add_(1)  # writable
