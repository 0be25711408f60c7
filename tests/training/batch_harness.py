"""Run one training DAG in this process with ``dag.test()`` (what ``airflow dags test`` does),
with the AWS Batch hook's poll pauses shortened.

    python tests/training/batch_harness.py <dag_id> '<run conf as JSON>'

``BatchClientHook.DEFAULT_DELAY_MIN``/``DEFAULT_DELAY_MAX`` are the hook's documented knobs for
its random pause between status polls (1-10 s by default, three pauses per job); the moto
server answers at once, so the test needs no pause. Exits 0 when the DAG run succeeded.
"""

from __future__ import annotations

import json
import sys

from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook

from training.airflow_runner import DAGS_FOLDER

BatchClientHook.DEFAULT_DELAY_MIN = 0
BatchClientHook.DEFAULT_DELAY_MAX = 0.1


def main(dag_id: str, conf: str) -> int:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    if bag.import_errors:
        print(json.dumps(bag.import_errors), file=sys.stderr)
        return 2
    dag_run = bag.dags[dag_id].test(run_conf=json.loads(conf))
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    print("TASK_STATES " + json.dumps(states), flush=True)
    return 0 if str(dag_run.state) in ("success", "DagRunState.SUCCESS") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
