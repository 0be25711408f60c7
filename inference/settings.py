"""Settings of the inference chain: environment variables on Lambda, Hydra config locally.

This module is the one home of the chain's defaults: :class:`ChainDefaults` declares each
tunable once with its default, and :data:`DEFAULTS` is that set of defaults for code that has no
settings at hand (the dashboards' drift line, the benchmark's Lambda prices). The Hydra
``inference`` group leaves a tunable ``null`` to mean "this default".

On Lambda every value comes from the function's environment (Terraform sets it) and is checked
by pydantic at cold start, so a missing or malformed variable fails the init with a message
naming it instead of failing some scene later. Locally :func:`settings_from_config` maps the
Hydra ``inference``/``storage``/``infra`` groups onto the same model, and
:meth:`ChainSettings.to_env` gives the environment a Lambda would see.

The ledger URL is ``LEDGER_URL`` or, on AWS, built from the Secrets Manager secret named by
``LEDGER_SECRET_ARN`` (JSON ``{username, password, host, port, dbname}``, the RDS layout).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.artifacts import default_manifest_prefix
from core.limits import DEFAULT_MAX_PIXELS


class SettingsError(RuntimeError):
    """The chain's configuration is missing or invalid."""


def onnx_available() -> bool:
    """Whether this image can run the ONNX backend (its module and onnxruntime are installed)."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "inference.runtime_onnx"))


#: AWS Lambda on-demand compute list prices in USD per GB-second (us-east-1, first pricing tier), by
#: the functions' instruction set (``LAMBDA_ARCHITECTURE``; Terraform's ``lambda_architecture``).
LAMBDA_USD_PER_GB_S: dict[str, float] = {"x86_64": 0.0000166667, "arm64": 0.0000133334}


class ChainDefaults(BaseModel):
    """The chain's tunables, each with its one default. Field aliases are the environment names."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")

    model_name: str = Field("chesapeake-landcover", alias="MODEL_NAME")
    # auto: the fastest path this CPU, image and champion allow (inference.runtime_cpu.PATHS).
    backend: Literal["auto", "torch", "onnx"] = Field("auto", alias="BACKEND")
    chip_size: int = Field(256, alias="CHIP_SIZE", gt=0, description="sliding-window chip side (px)")
    overlap: int = Field(32, alias="OVERLAP", ge=0, description="pixels shared by neighbouring windows")
    batch_size: int = Field(8, alias="BATCH_SIZE", gt=0, description="windows per forward pass")
    low_confidence_threshold: float = Field(
        0.5, alias="LOW_CONFIDENCE_THRESHOLD", ge=0.0, le=1.0, description="max softmax below this is low"
    )
    # 0.2 is the usual "significant shift" line of the population stability index.
    drift_threshold: float = Field(0.2, alias="DRIFT_THRESHOLD", gt=0.0, description="PSI that flags drift")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, alias="MAX_PIXELS", gt=0, description="largest scene read")
    # The synchronous API answers with the class map as JSON (~2 bytes a pixel) within Lambda's
    # 6 MB response limit: 1536² pixels make about 4.7 MB.
    max_request_pixels: int = Field(1536 * 1536, alias="MAX_REQUEST_PIXELS", gt=0)
    model_cache_dir: str = Field("/tmp/model", alias="MODEL_CACHE_DIR")
    scene_cache_dir: str = Field("/tmp/scenes", alias="SCENE_CACHE_DIR")
    max_attempts: int = Field(3, alias="MAX_ATTEMPTS", gt=0)
    # How long a claim on a scene is held: the infer Lambda's 900 s timeout plus a margin, so a
    # live attempt is never taken over and a crashed one is offered again after it.
    lease_s: float = Field(960.0, alias="LEASE_S", ge=0.0)
    # A running run that makes no progress (no claim, no prediction) for this long is abandoned.
    run_stale_after_s: float = Field(1920.0, alias="RUN_STALE_AFTER_S", gt=0.0)
    # Blocks: a scene is predicted in blocks of at most block_chips x block_chips chips, one infer
    # call each. None sizes them from the champion's measured throughput so that one block's
    # prediction takes at most block_time_share of the infer timeout at the infer memory.
    block_chips: int | None = Field(None, alias="BLOCK_CHIPS", gt=0)
    block_time_share: float = Field(0.5, alias="BLOCK_TIME_SHARE", gt=0.0, le=1.0)
    # Lambda calls each Map (blocks, then scenes) runs at once, and the share of failed items it
    # tolerates before the execution fails (the ledger records every failure either way).
    max_concurrency: int = Field(10, alias="MAX_CONCURRENCY", gt=0)
    tolerated_failure_percentage: float = Field(5.0, alias="TOLERATED_FAILURE_PERCENTAGE", ge=0.0, le=100.0)
    # The infer function's timeout (Terraform sets it from infra.infer_timeout_s; Lambda's cap is 900 s).
    infer_timeout_s: float = Field(900.0, alias="INFER_TIMEOUT_S", gt=0.0, le=900.0)
    # Lambda gives one full vCPU at 1,769 MB, CPU in proportion to memory, and at most 6 vCPUs.
    lambda_mb_per_vcpu: float = Field(1769.0, alias="LAMBDA_MB_PER_VCPU", gt=0.0)
    lambda_max_vcpus: float = Field(6.0, alias="LAMBDA_MAX_VCPUS", gt=0.0)
    # The functions' instruction set (Terraform sets it from infra.lambda_architecture); it picks
    # the compute price from LAMBDA_USD_PER_GB_S above.
    lambda_architecture: Literal["x86_64", "arm64"] = Field("x86_64", alias="LAMBDA_ARCHITECTURE")
    # An explicit compute price per GB-second (another region, a savings plan); None: the list
    # price of lambda_architecture. Read it through lambda_usd_per_gb_s.
    lambda_usd_per_gb_s_override: float | None = Field(None, alias="LAMBDA_USD_PER_GB_S", ge=0.0)
    # AWS Lambda on-demand list price per request (us-east-1; the same on x86_64 and arm64).
    lambda_usd_per_request: float = Field(0.0000002, alias="LAMBDA_USD_PER_REQUEST", ge=0.0)
    # Runs triggered by new imagery (inference/trigger.py): uploads whose object-created events
    # fall in the same window of this many seconds (aligned to the epoch) start one execution,
    # which waits for the window to close before listing the input prefix.
    trigger_window_s: float = Field(300.0, alias="TRIGGER_WINDOW_S", gt=0.0, le=86400.0)

    @property
    def lambda_usd_per_gb_s(self) -> float:
        """Lambda's compute price per GB-second: ``LAMBDA_USD_PER_GB_S`` if set, else the list price
        of ``lambda_architecture``."""
        if self.lambda_usd_per_gb_s_override is not None:
            return self.lambda_usd_per_gb_s_override
        return LAMBDA_USD_PER_GB_S[self.lambda_architecture]

    def lambda_vcpus(self, memory_mb: float) -> float:
        """The CPU share a Lambda function of ``memory_mb`` gets, in vCPUs."""
        return min(memory_mb / self.lambda_mb_per_vcpu, self.lambda_max_vcpus)

    def lambda_cost_usd(self, seconds: float, memory_mb: int, invocations: int = 0) -> float:
        """Estimated Lambda cost: GB-seconds at the compute price plus the request charges."""
        return (
            seconds * memory_mb / 1024.0 * self.lambda_usd_per_gb_s
            + invocations * self.lambda_usd_per_request
        )


#: The defaults, for code without settings at hand.
DEFAULTS = ChainDefaults()


class ChainSettings(ChainDefaults):
    """Everything process / infer / observe need: the tunables plus where things are."""

    input_uri: str = Field(alias="INPUT_URI", description="prefix where new NAIP scenes (*.tif) arrive")
    output_uri: str = Field(alias="OUTPUT_URI", description="prefix of class/confidence COGs and STAC items")
    registry_uri: str = Field(alias="REGISTRY_URI", description="root of the model registry")
    ledger_url: str | None = Field(None, alias="LEDGER_URL")
    ledger_secret_arn: str | None = Field(None, alias="LEDGER_SECRET_ARN")
    manifest_uri: str | None = Field(
        None, alias="MANIFEST_URI", description="prefix of run manifests; default <OUTPUT_URI>/manifests"
    )
    # The infer function's memory, which blocks are sized for and infer costs are priced at
    # (every function sees it; Terraform sets it from infra.infer_memory_mb). None: costs are
    # not estimated and blocks need a configured block_chips.
    infer_memory_mb: int | None = Field(None, alias="INFER_MEMORY_MB", gt=0)
    aws_endpoint_url: str | None = Field(None, alias="AWS_ENDPOINT_URL")
    aws_region: str | None = Field(None, alias="AWS_REGION")
    # The SNS topic completion notices go to (inference/notify.py); None (embedded mode): the
    # notice is only written under <OUTPUT_URI>/notices/ and logged.
    notice_topic_arn: str | None = Field(None, alias="NOTICE_TOPIC_ARN")

    @field_validator("input_uri", "output_uri", "registry_uri", "manifest_uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("file://", "s3://")):
            raise ValueError(f"must be a file:// or s3:// URI, got {value!r}")
        return value

    @model_validator(mode="after")
    def _ledger(self) -> ChainSettings:
        if not (self.ledger_url or self.ledger_secret_arn):
            raise ValueError("set LEDGER_URL (an SQLAlchemy URL) or LEDGER_SECRET_ARN (an RDS secret)")
        if self.overlap >= self.chip_size:
            raise ValueError(f"OVERLAP ({self.overlap}) must be smaller than CHIP_SIZE ({self.chip_size})")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ChainSettings:
        """Settings from environment variables; raises :class:`SettingsError` naming what is wrong."""
        env = dict(os.environ if environ is None else environ)
        names = {f.alias for f in cls.model_fields.values() if f.alias}
        values = {k: v for k, v in env.items() if k in names and v != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
            )
            raise SettingsError(f"invalid inference chain environment: {problems}") from exc

    @property
    def manifest_prefix(self) -> str:
        """Where run manifests go (``MANIFEST_URI``, else ``<OUTPUT_URI>/manifests``)."""
        return self.manifest_uri or default_manifest_prefix(self.output_uri)

    def resolved_ledger_url(self) -> str:
        """``LEDGER_URL``, or the RDS URL built from the Secrets Manager secret (cached)."""
        if self.ledger_url:
            return self.ledger_url
        return _url_from_secret(self.ledger_secret_arn or "", self.aws_endpoint_url)

    def to_env(self) -> dict[str, str]:
        """The environment variables a Lambda running with these settings would have."""
        out: dict[str, str] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if value is not None and field.alias:
                out[field.alias] = str(value)
        return out


@functools.lru_cache(maxsize=4)
def _url_from_secret(secret_arn: str, endpoint_url: str | None) -> str:
    """An SQLAlchemy URL from an RDS-style secret; the password never passes through a string format."""
    import sqlalchemy as sa

    from core import storage
    from inference.ledger.db import POSTGRES_DRIVER

    try:
        raw = storage.boto3_client("secretsmanager").get_secret_value(SecretId=secret_arn)["SecretString"]
        secret = json.loads(raw)
        url = sa.URL.create(
            POSTGRES_DRIVER,
            username=secret["username"],
            password=secret["password"],
            host=secret["host"],
            port=int(secret.get("port", 5432)),
            database=secret.get("dbname") or secret.get("database") or "postgres",
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise SettingsError(
            f"secret {secret_arn} must be JSON with username, password, host, port, dbname: {exc!r}"
        ) from exc
    return url.render_as_string(hide_password=False)


def settings_from_config(cfg: Any, **overrides: Any) -> ChainSettings:
    """Map a composed Hydra config (groups ``inference``, ``storage``, ``infra``, ``model_name``) to
    settings. A tunable the ``inference`` group leaves ``null`` keeps its :class:`ChainDefaults` value;
    ``infra.backend``/``infra.lambda_architecture`` (what Terraform deploys) apply locally too."""
    inf, store = cfg.inference, cfg.storage
    values: dict[str, Any] = {
        "registry_uri": store.registry_uri,
        "model_name": cfg.model_name,
        "aws_endpoint_url": store.s3.endpoint_url,
        "aws_region": store.s3.region,
        "infer_memory_mb": cfg.infra.infer_memory_mb,
        "infer_timeout_s": cfg.infra.infer_timeout_s,
        # What the deployment serves with and runs on (Terraform's BACKEND, LAMBDA_ARCHITECTURE).
        "backend": cfg.infra.get("backend"),
        "lambda_architecture": cfg.infra.get("lambda_architecture"),
    }
    for key in ChainSettings.model_fields:
        if key in inf:
            values[key] = inf[key]
    values.update(overrides)
    try:
        return ChainSettings.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise SettingsError(f"invalid inference config: {exc}") from exc
