"""Runs the state machine's happy path with the Lambda handlers, inside the Lambda environment.

    python -S -I lambda_chain_driver.py <site-packages> <shipped code> <execution id>

``tests/inference/test_lambda_env.py`` starts it in an interpreter without site-packages, user
site or ``PYTHONPATH`` (``-S -I``), so ``sys.path`` holds the standard library, the folder that
``pip install --target`` built from the image's lock, and a copy of the files the image ships:
nothing else. It calls the handlers in the order ``pipeline.asl.json`` does on a run without a
challenger (Process, the blocks Map, the scenes Map, Observe, NotifySucceeded; the Maps read
their items from the manifests in S3, as the ItemReaders do), and prints one JSON line: each
step's result and the top-level modules the run loaded.
"""

import json
import sys

sys.path[:0] = [sys.argv[1], sys.argv[2]]
EXECUTION_ID = sys.argv[3]


class Context:
    """The part of Lambda's context object the handlers read."""

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def main() -> None:
    import importlib

    # Each function imports only its own handler module (which checks its settings at import).
    steps_run = ("process", "infer", "assemble", "observe", "notify")
    modules = {
        f"inference.handlers.{n}": importlib.import_module(f"inference.handlers.{n}") for n in steps_run
    }
    from core import storage

    ctx = Context()
    steps = {"process": modules["inference.handlers.process"].handler({"execution_id": EXECUTION_ID}, ctx)}
    infer = modules["inference.handlers.infer"].handler
    blocks = json.loads(storage.read_text(steps["process"]["manifest_uri"]))
    steps["infer"] = [infer({"execution_id": EXECUTION_ID, "item": item}, ctx) for item in blocks]
    assemble = modules["inference.handlers.assemble"].handler
    scenes = json.loads(storage.read_text(steps["process"]["scenes_uri"]))
    steps["assemble"] = [assemble({"execution_id": EXECUTION_ID, "item": item}, ctx) for item in scenes]
    steps["observe"] = modules["inference.handlers.observe"].handler({"execution_id": EXECUTION_ID}, ctx)
    notify = modules["inference.handlers.notify"].handler
    steps["notify"] = notify({"execution_id": EXECUTION_ID, "outcome": "succeeded"}, ctx)
    loaded = sorted({name.split(".")[0] for name in sys.modules})
    print(json.dumps({"steps": steps, "modules": loaded, "sys_path": sys.path}, default=str))


if __name__ == "__main__":
    main()
