"""Render the inference stack's Terraform variables from the Hydra config.

    python setup/render_tfvars.py [--out PATH] [--image-tag TAG] [hydra overrides ...]

Composes ``setup/conf`` (with ``storage=s3``: the cloud stack keeps the registry in S3) and writes
``inference/tf/vars/inference.tfvars.json``. Keys come from the ``infra`` group (project, region,
schedule, backend, Lambda architecture, RDS/access switches), ``inference`` (chain settings ->
Lambda env) and ``model_name``. ``null`` values are left out so Terraform's (or the chain's)
defaults apply. No credentials are read or written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "inference" / "tf" / "vars" / "inference.tfvars.json"

# infra.<key> copied verbatim to the Terraform variable of the same name.
INFRA_KEYS = (
    "project",
    "aws_region",
    "schedule_expression",
    "schedule_timezone",
    "schedule_enabled",
    "backend",
    "lambda_architecture",
    "infer_memory_mb",
    "infer_timeout_s",
    "enable_rds",
    "ledger_secret_arn",
    "enable_access_host",
    "alarm_email",
    "log_retention_days",
    "trigger_enabled",
    "trigger_window_s",
    "notice_subscriptions",
)


def chain_env(inference: dict[str, Any]) -> dict[str, str]:
    """inference.<key> set in the config -> its ChainSettings environment variable, on every Lambda.

    Every chain tunable (a :class:`~inference.settings.ChainDefaults` field) the config sets;
    the variable names are the fields' aliases, so they are spelled once.
    """
    from inference.settings import ChainDefaults

    fields = ChainDefaults.model_fields
    return {
        fields[key].alias: str(value)
        for key, value in inference.items()
        if key in fields and fields[key].alias and value is not None
    }


def _bucket(uri: str, what: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise SystemExit(f"{what} must be an s3:// URI for the cloud stack, got {uri!r}")
    return parsed.netloc


def render(overrides: list[str], image_tag: str | None = None) -> dict[str, Any]:
    """The tfvars mapping for a Hydra config composed with ``storage=s3`` and ``overrides``."""
    from omegaconf import OmegaConf

    from core.config import compose

    cfg = OmegaConf.to_container(compose(["storage=s3", *overrides]), resolve=True)
    infra, inference = cfg["infra"], cfg["inference"]
    tfvars: dict[str, Any] = {key: infra.get(key) for key in INFRA_KEYS}
    tfvars["model_name"] = cfg["model_name"]
    tfvars["registry_bucket_name"] = _bucket(cfg["storage"]["registry_uri"], "storage.registry_uri")
    tfvars["chain_settings"] = chain_env(inference)
    if image_tag:
        tfvars["image_tag"] = image_tag
    return {key: value for key, value in tfvars.items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="tfvars JSON to write")
    parser.add_argument("--image-tag", help="ECR tag of the inference image the Lambdas run")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. infra.project=acme")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT))
    tfvars = render(args.overrides, args.image_tag)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(tfvars, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}:")
    print(json.dumps(tfvars, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
