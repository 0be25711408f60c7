"""Lambda ``trigger``: an EventBridge S3 ``Object Created`` event starts (or joins) its window's execution.

Not a step of the chain: the EventBridge rule on the data bucket's input prefix invokes it. It
needs only ``STATE_MACHINE_ARN`` and ``TRIGGER_WINDOW_S`` (no ledger), so it runs outside the VPC.
"""

from __future__ import annotations

import os
from typing import Any

from core import storage
from inference import trigger

_settings: trigger.TriggerSettings | None = None


def settings() -> trigger.TriggerSettings:
    """This container's trigger settings (from the environment on first use)."""
    global _settings
    if _settings is None:
        _settings = trigger.TriggerSettings.from_env()
    return _settings


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    settings()  # a misconfigured function fails its init, naming the variable


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """An EventBridge event -> ``{"action", "execution_name", "execution_arn", "reason"}``."""
    s = settings()
    if s.aws_endpoint_url and s.aws_endpoint_url != storage.endpoint_url():
        storage.configure(endpoint_url=s.aws_endpoint_url, region=s.aws_region)
    sfn = storage.boto3_client("stepfunctions")
    return trigger.handle_event(sfn, s.state_machine_arn, event, s.trigger_window_s).to_dict()
