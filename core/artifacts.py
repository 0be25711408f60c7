"""Every artifact's name and place: the one module that knows how the platform lays out its files.

Three trees, each under a URI root that configuration chooses (``file://`` or ``s3://``):

- **Training runs** (``<storage.root_uri>/runs/<run_id>/``): the resolved config, one JSON record
  per finished step, the data statistics, the trained head and the held-out metrics.
- **The model registry** (``<registry_uri>/<model>/``): immutable version folders holding the
  export, its ONNX model, config, metrics and card under ``version.json``; the champion pointer;
  the promotion history.
- **Inference outputs** (``<output_uri>/<sha256>/<model_version>/``): class and confidence COGs,
  the STAC item and the scene summary; run manifests under the manifest prefix.

Everything else asks this module for a name or a URI instead of spelling one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core import storage

# -- names inside a registry version folder -------------------------------------------------
EXPORT_NAME = "model.safetensors"
ONNX_INT8_NAME = "model.int8.onnx"  # ONNX Runtime int8, 7-bit weights: AVX2 CPUs without VNNI
ONNX_INT8_VNNI_NAME = "model.int8-vnni.onnx"  # ONNX Runtime int8, full 8-bit weights: VNNI/AMX/Arm dotprod
ONNX_INT8_QDQ_NAME = "model.int8-qdq.onnx"  # static (calibrated) QDQ int8 weight MatMuls: OpenVINO on AMX
ONNX_FP32_NAME = "model.fp32.onnx"  # fp32 graph: OpenVINO bf16 and comparisons
#: Every runtime artifact registration writes beside the export (see training.models.onnx_export).
RUNTIME_ARTIFACT_NAMES = (ONNX_INT8_NAME, ONNX_INT8_VNNI_NAME, ONNX_INT8_QDQ_NAME, ONNX_FP32_NAME)
CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.json"
CARD_NAME = "MODEL_CARD.md"
VERSION_MANIFEST_NAME = "version.json"
VERSION_CLAIM_NAME = "_claim.json"
# -- names beside the versions --------------------------------------------------------------
CHAMPION_NAME = "champion.json"
CHALLENGER_NAME = "challenger.json"  # the model predicting in shadow beside the champion
HISTORY_DIR = "history"

# -- names inside a training run folder -----------------------------------------------------
RUNS_DIR = "runs"
RUN_CONFIG_NAME = CONFIG_NAME
STEPS_DIR = "steps"
DATA_STATS_NAME = "data_stats.json"
HEAD_NAME = "head.safetensors"
RUN_METRICS_NAME = METRICS_NAME
TRACKING_IDS_NAME = "tracking.json"

# -- names inside the feature cache ---------------------------------------------------------
ENCODER_WEIGHTS_NAME = "encoder.safetensors"
FEATURE_MANIFEST_NAME = "manifest.json"

# -- names of one scene's inference outputs -------------------------------------------------
CLASS_COG_NAME = "classes.tif"
CONFIDENCE_COG_NAME = "confidence.tif"
STAC_ITEM_NAME = "item.json"
SCENE_SUMMARY_NAME = "summary.json"
QUICKLOOK_NAME = "quicklook.png"
MANIFESTS_DIR = "manifests"
#: Where the per-block outputs of scenes being assembled go, under the output prefix (removed
#: after assembly; the bucket's lifecycle rule expires what a crash leaves behind).
BLOCKS_DIR = "_blocks"
BLOCK_OUTPUT_SUFFIX = ".npz"
#: The challenger's outputs (never served) under the output prefix, and its blocks under BLOCKS_DIR.
SHADOW_DIR = "_shadow"
#: Suffix of an execution's scene list, beside its block manifest.
SCENES_MANIFEST_SUFFIX = ".scenes.json"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, max_length: int = 200) -> str:
    """``text`` as one path segment: runs of other characters become ``_``, trimmed at both ends."""
    return _UNSAFE.sub("_", text).strip("_")[:max_length]


# -- training runs ----------------------------------------------------------------------------


def run_uri(root_uri: str, run_id: str) -> str:
    """The folder of training run ``run_id`` under the artifact root."""
    return storage.join(root_uri, RUNS_DIR, safe_name(run_id))


def step_record_uri(run_uri: str, step: str) -> str:
    """The JSON record a finished pipeline step leaves in its run folder."""
    return storage.join(run_uri, STEPS_DIR, f"{step}.json")


def shard_name(index: int) -> str:
    """The file name of feature shard ``index``."""
    return f"shard-{index:05d}.safetensors"


# -- the registry -----------------------------------------------------------------------------


def model_uri(root_uri: str, model_name: str) -> str:
    """The folder of every version of ``model_name`` (names are checked by the registry)."""
    return storage.join(storage.to_uri(root_uri), model_name)


def version_uri(root_uri: str, model_name: str, version: str) -> str:
    """The immutable folder of one registered version."""
    return storage.join(model_uri(root_uri, model_name), version)


def champion_uri(root_uri: str, model_name: str) -> str:
    """The champion pointer of ``model_name``."""
    return storage.join(model_uri(root_uri, model_name), CHAMPION_NAME)


def challenger_uri(root_uri: str, model_name: str) -> str:
    """The challenger pointer of ``model_name`` (the model predicting in shadow)."""
    return storage.join(model_uri(root_uri, model_name), CHALLENGER_NAME)


def history_uri(root_uri: str, model_name: str) -> str:
    """The folder of promotion decisions of ``model_name``."""
    return storage.join(model_uri(root_uri, model_name), HISTORY_DIR)


def in_version(version_folder: str, name: str) -> str:
    """The URI of artifact ``name`` (one of the ``*_NAME`` constants) in a version folder."""
    return storage.join(version_folder, name)


# -- inference outputs ------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneOutputs:
    """Where one scene's prediction by one model version is written (deterministic, so a
    re-run overwrites instead of duplicating)."""

    prefix: str

    @property
    def class_uri(self) -> str:
        return storage.join(self.prefix, CLASS_COG_NAME)

    @property
    def confidence_uri(self) -> str:
        return storage.join(self.prefix, CONFIDENCE_COG_NAME)

    @property
    def stac_uri(self) -> str:
        return storage.join(self.prefix, STAC_ITEM_NAME)

    @property
    def summary_uri(self) -> str:
        return storage.join(self.prefix, SCENE_SUMMARY_NAME)

    @property
    def quicklook_uri(self) -> str:
        return storage.join(self.prefix, QUICKLOOK_NAME)


def scene_outputs(output_uri: str, sha256: str, model_version: str) -> SceneOutputs:
    """The output folder of scene ``sha256`` predicted by ``model_version``."""
    return SceneOutputs(storage.join(output_uri, sha256, safe_name(model_version)))


def stac_item_id(sha256: str, model_version: str) -> str:
    """The STAC item id of one scene's prediction by one model version."""
    return f"{sha256[:16]}-{safe_name(model_version)}"


def default_manifest_prefix(output_uri: str) -> str:
    """Where run manifests go when no manifest prefix is configured."""
    return storage.join(output_uri, MANIFESTS_DIR)


def manifest_uri(manifest_prefix: str, execution_id: str) -> str:
    """The manifest of one state-machine execution: the blocks its infer Map predicts."""
    return storage.join(manifest_prefix, safe_name(execution_id) + ".json")


def scenes_manifest_uri(manifest_prefix: str, execution_id: str) -> str:
    """The scenes of one execution, which its assembly Map finishes and observe tallies."""
    return storage.join(manifest_prefix, safe_name(execution_id) + SCENES_MANIFEST_SUFFIX)


def blocks_prefix(output_uri: str, sha256: str, model_version: str, shadow: bool = False) -> str:
    """The folder of one scene's block outputs by one model version (``shadow``: as challenger)."""
    base = (
        storage.join(output_uri, BLOCKS_DIR, SHADOW_DIR) if shadow else storage.join(output_uri, BLOCKS_DIR)
    )
    return storage.join(base, sha256, safe_name(model_version))


def block_output_uri(
    output_uri: str, sha256: str, model_version: str, block_index: int, shadow: bool = False
) -> str:
    """The outputs of one block (classes, confidence and the block's sums, in one file)."""
    return storage.join(
        blocks_prefix(output_uri, sha256, model_version, shadow), f"{block_index:05d}{BLOCK_OUTPUT_SUFFIX}"
    )


def shadow_outputs(output_uri: str, sha256: str, challenger_version: str) -> SceneOutputs:
    """The output folder of scene ``sha256`` predicted in shadow by ``challenger_version``."""
    return SceneOutputs(storage.join(output_uri, SHADOW_DIR, sha256, safe_name(challenger_version)))
