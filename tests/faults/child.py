"""One execution of the real chain in its own process, so that a fault test can SIGKILL it.

    python -m tests.faults.child SETTINGS_JSON EXECUTION_ID [--stall-marker PATH]

With ``--stall-marker`` the first block prediction touches PATH and then hangs (the injected
fault: the parent kills the process there, mid-infer, after the scene was claimed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from core import storage
from inference.settings import ChainSettings
from tests.faults.harness import run_chain


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("settings")
    parser.add_argument("execution_id")
    parser.add_argument("--stall-marker")
    args = parser.parse_args()
    settings = ChainSettings.model_validate_json(Path(args.settings).read_text())
    storage.configure(endpoint_url=settings.aws_endpoint_url, region=settings.aws_region)
    if args.stall_marker:
        import inference.predict

        def stall(*_: object, **__: object) -> None:
            Path(args.stall_marker).touch()
            time.sleep(3600)

        inference.predict.predict_block = stall  # the injected fault, in this child only
    result = run_chain(settings, args.execution_id)
    json.dump({"status": result.status, "calls": result.calls}, sys.stdout)
    return 0 if result.succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
