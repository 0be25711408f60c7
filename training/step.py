"""Run one pipeline step on an existing run: what the AWS Batch containers execute.

    python -m training.step cache_features --run-uri s3://.../runs/<run_id>
    python -m training.step cache_features --run-uri ... --shard 3
    python -m training.step train_head --run-uri s3://.../runs/<run_id>

The step rebuilds its config from the run folder (as every Airflow task does), so a step runs
the same in the Airflow worker and in a container. ``cache_features`` with ``--shard i``, or in an
array child (``AWS_BATCH_JOB_ARRAY_INDEX`` set), caches only shard ``i`` of the scenes and
records nothing; ``cache_features`` without a shard merges the finished shards (caching any that
are missing) and records the step's result.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

#: The variable AWS Batch sets in each child of an array job.
ARRAY_INDEX_ENV = "AWS_BATCH_JOB_ARRAY_INDEX"


def shard_index(explicit: int | None, environ: dict[str, str] | None = None) -> int | None:
    """``--shard`` if given, else the array child's index, else None (the whole step).

    Raises:
        ValueError: the environment's index is not an integer.
    """
    if explicit is not None:
        return explicit
    value = (os.environ if environ is None else environ).get(ARRAY_INDEX_ENV)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{ARRAY_INDEX_ENV}={value!r} is not an integer") from None


def run_step(step: str, run_uri: str, shard: int | None = None) -> dict[str, Any]:
    """Run ``step`` on the run at ``run_uri`` (one shard of cache_features if ``shard`` is set).

    Raises:
        ValueError: an unknown step, or a shard for a step other than cache_features.
    """
    from training import pipeline

    if step not in pipeline.STEPS:
        raise ValueError(f"unknown step {step!r}; choose from {', '.join(pipeline.STEPS)}")
    run = pipeline.load_run(run_uri)
    if shard is not None:
        if step != "cache_features":
            raise ValueError(f"--shard applies to cache_features only, not {step}")
        return pipeline.cache_features_shard(run, shard)
    return getattr(pipeline, step)(run)  # each step is the pipeline function of its name


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", help="a pipeline step, e.g. cache_features or train_head")
    parser.add_argument("--run-uri", required=True, help="the run folder (s3://... or file://...)")
    parser.add_argument(
        "--shard",
        type=int,
        default=None,
        help=f"cache_features: only this shard (default: ${ARRAY_INDEX_ENV})",
    )
    args = parser.parse_args(argv)
    # An array index concerns cache_features only; --shard on another step is an error.
    shard = shard_index(args.shard) if args.step == "cache_features" else args.shard
    result = run_step(args.step, args.run_uri, shard)
    log.info("[%s] result: %s", args.step, json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
