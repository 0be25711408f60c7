"""The Hydra config tree composes, documents every key, and prints with --cfg job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from core.config import CONF_DIR, REPO_ROOT, compose

GROUPS = ["data", "model", "training", "logging", "storage", "inference", "infra"]


def test_default_config_composes_with_every_group() -> None:
    cfg = compose()
    for group in GROUPS:
        assert group in cfg, group
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["data"]["root_uri"].startswith("file://")
    assert resolved["model"]["preset"] == "tiny"
    assert resolved["training"]["features_uri"].endswith("/features")


@pytest.mark.parametrize("preset", ["tiny", "small", "base", "large"])
def test_model_presets(preset: str) -> None:
    assert compose([f"model=clay_{preset}"]).model.preset == preset


def test_variants_are_overrides_of_baseline() -> None:
    base = compose()
    useful = compose(["training=useful"])
    weighted = compose(["training=class_weighted"])
    assert useful.training.epochs > base.training.epochs
    assert weighted.training.class_weights == "inverse_frequency"
    assert weighted.training.lr == base.training.lr


def test_overrides_and_env(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    cfg = compose(["storage=s3", "infra.project=acme", "training.epochs=3"])
    assert cfg.storage.registry_uri == "s3://acme-registry"
    assert cfg.storage.s3.endpoint_url == "http://127.0.0.1:5000"
    assert cfg.training.epochs == 3


def _leaf_lines_without_comment(path: Path) -> list[str]:
    """Lines that set a key but have no comment on the line or the line above."""
    lines = path.read_text().splitlines()
    missing = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("-") or ":" not in stripped:
            continue
        if "#" in line or (i > 0 and lines[i - 1].strip().startswith("#")):
            continue
        key, _, value = stripped.partition(":")
        if value.strip() == "" or key in {"defaults", "hydra", "job", "run"}:
            continue  # a mapping header: its children are documented
        missing.append(f"{path.relative_to(CONF_DIR)}: {stripped}")
    return missing


def test_every_key_is_documented() -> None:
    files = sorted(CONF_DIR.rglob("*.yaml"))
    assert len(files) >= len(GROUPS) + 1
    for path in files:
        yaml.safe_load(path.read_text())  # valid YAML
    undocumented = [m for path in files for m in _leaf_lines_without_comment(path)]
    assert undocumented == []


def test_cfg_job_prints_the_composed_config() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "training.train", "--cfg", "job", "model=clay_small"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    printed = yaml.safe_load(out)
    assert printed["model"]["preset"] == "small"
    assert set(GROUPS) <= set(printed)


def test_class_weights_none_inverse_frequency_or_one_per_class() -> None:
    from training.pipeline import _class_weights

    stats = {"class_fractions": [0.1, 0.4, 0.3, 0.05, 0.1, 0.05, 0.0]}
    assert _class_weights(compose(["training.class_weights=null"]), stats) is None
    inverse = _class_weights(compose(["training=class_weighted"]), stats)
    assert inverse[6] == 0.0 and inverse[3] == inverse[5] > inverse[1]
    explicit = _class_weights(compose(["training.class_weights=[1,1,1,1,1,2,0]"]), stats)
    assert explicit == [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 0.0]
    for bad in ("[1,1,1]", "[1,1,1,1,1,-2,0]"):
        with pytest.raises(ValueError, match="one per class"):
            _class_weights(compose([f"training.class_weights={bad}"]), stats)
    with pytest.raises(ValueError, match="inverse_frequency"):
        _class_weights(compose(["training.class_weights=median"]), stats)
