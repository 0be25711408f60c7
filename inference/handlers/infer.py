"""Lambda ``infer``: predict one block of the Map state, or serve a synchronous request.

Two event shapes:

- a Map item ``{"execution_id", "item": {"scene_id", "uri", "sha256", "block", "block_chips",
  "window"}}`` -> ``{"scene_id", "block", "status", "model_version"}`` (the batch chain), with
  ``"shadow": true, "challenger_version"`` the challenger's block (:mod:`inference.shadow`);
- the synchronous API request of the replaced deployment ``{"image": <base64>, "output_size"?: [H, W]}`` (directly or as an
  API Gateway proxy ``body``) -> ``{"statusCode": 200, "body": {"prediction", "shape",
  "classes", ...}}`` with model class ids 0..6 and the explicit class table. A bad image is a
  400 with the reason, never a 500.
"""

from __future__ import annotations

import json
from typing import Any

from inference.handlers import InferEvent, cold_start, settings, time_budget
from inference.model_cache import load_champion
from inference.steps.infer import infer

cold_start()


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Dispatch on the event shape (see the module docstring)."""
    request = _sync_request(event)
    if request is not None:
        return predict_sync(request)
    parsed = InferEvent.model_validate(event)
    with time_budget(context):
        if parsed.shadow:
            from inference import shadow

            return shadow.infer_block(settings(), parsed.execution_id, parsed.item, parsed.challenger_version)
        return infer(settings(), parsed.execution_id, parsed.item)


def _sync_request(event: dict[str, Any]) -> dict[str, Any] | None:
    if "image" in event:
        return event
    body = event.get("body")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return None
    return body if isinstance(body, dict) and "image" in body else None


def predict_sync(request: dict[str, Any]) -> dict[str, Any]:
    """The API Gateway response around :func:`inference.sync_api.predict_request`."""
    from inference.predict import InvalidImageError
    from inference.sync_api import predict_request

    s = settings()
    model = load_champion(s)
    try:
        body = predict_request(model.predictor, request, s)
    except InvalidImageError as exc:
        return {"statusCode": 400, "body": {"error": "invalid_image", "message": str(exc)}}
    return {"statusCode": 200, "body": {**body, "model_version": model.version}}
