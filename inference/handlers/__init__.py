"""Lambda entry points: each handler parses its event, calls one library function
(:mod:`inference.steps`, :mod:`inference.shadow`, :mod:`inference.notify`,
:mod:`inference.trigger`) and returns ids and URIs.

One container image serves every function of :data:`HANDLER_MODULES`; each picks its entry
point with the image CMD override (``inference.handlers.process.handler`` and so on, see
``inference/Dockerfile``).

Settings are read from the environment once per container. On Lambda (``AWS_LAMBDA_FUNCTION_NAME``
is set) that happens at import, i.e. at cold start, so a misconfigured function fails its init
with a message naming the variable. The local runner injects settings with :func:`configure`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from inference import retry
from inference.settings import ChainSettings

#: The modules whose ``handler`` a Lambda function of the image runs (the image's build imports each).
HANDLER_MODULES = tuple(
    f"inference.handlers.{name}"
    for name in ("process", "infer", "assemble", "observe", "failure", "notify", "trigger")
)

log = logging.getLogger("inference.handlers")
if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    logging.getLogger().setLevel(os.environ.get("LOG_LEVEL", "INFO"))

_settings: ChainSettings | None = None


def settings() -> ChainSettings:
    """The chain settings of this container (from the environment on first use)."""
    global _settings
    if _settings is None:
        _settings = ChainSettings.from_env()
    return _settings


def configure(value: ChainSettings | None) -> None:
    """Use ``value`` instead of the environment (``None`` re-reads the environment next time)."""
    global _settings
    _settings = value


def cold_start() -> None:
    """Validate the settings at import when running on Lambda."""
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        settings()


def time_budget(context: Any) -> contextlib.AbstractContextManager[None]:
    """Let transient-fault retries run within the time this invocation has left."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return retry.time_budget(int(remaining()) if callable(remaining) else None)


class ExecutionEvent(BaseModel):
    """``{"execution_id": ...}``: what the state machine passes process and observe."""

    model_config = ConfigDict(extra="ignore")
    execution_id: str


class InferEvent(ExecutionEvent):
    """One Map item: the execution id plus a manifest item (a block of a scene for infer, a
    scene for assemble). The shadow Maps add ``shadow: true`` and the challenger's version."""

    item: dict[str, Any]
    shadow: bool = False
    challenger_version: str | None = None

    @model_validator(mode="after")
    def _challenger_named(self) -> InferEvent:
        if self.shadow and not self.challenger_version:
            raise ValueError("a shadow item needs challenger_version (process names it)")
        return self


class FailureEvent(ExecutionEvent):
    """The Catch path: the execution id and the caught ``{"Error", "Cause"}``."""

    error: dict[str, Any] | None = None
