"""The DAG of the event stream and webhook test in Maestro's end-to-end tests.

`tests/e2e/airflow.rs` names it by the same id (`SOYLENT_EVENTS`); change
them together. It belongs to a customer of its own, `soylent`, so that the
test sees every change of its runs and nothing else, and the other tests'
lists of pipelines stay as they are. One run at a time, each about five
seconds long: a second run waits queued while the first runs, so that a
poll every two seconds sees every status of both. It starts paused
(Airflow's default for new DAGs): a run triggered while it is paused stays
queued until the test unpauses it.
"""

from __future__ import annotations

import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

START = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)

with DAG(
    dag_id="5ead5761_50ca_4cae_b968_fc9506ad5eeb",
    description="Soylent: watched through the event stream and a webhook",
    schedule=None,
    start_date=START,
    catchup=False,
    tags=["customer:soylent"],
    max_active_runs=1,
    default_args={"retries": 0},
):
    BashOperator(task_id="work", bash_command="sleep 5")
