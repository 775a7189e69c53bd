"""DAGs for the run lifecycle in Maestro's end-to-end tests: run parameters
and cancel.

Like the DAGs of `maestro_e2e.py`, each plays one role in
`crates/adapter-airflow/tests/e2e.rs`, which names them by the same ids
(kept in `crates/airflow-test-support`); change them together. They belong
to a customer of their own, `vandelay`, so that the other tests' lists of
acme's and globex's pipelines stay as they are. Both start paused
(Airflow's default for new DAGs); the tests unpause what they need.
"""

from __future__ import annotations

import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param, task

START = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)

# Declares its parameters, so that Airflow refuses a trigger whose `conf`
# gives them values of the wrong kind (a `date` that is not a date, a
# `full_refresh` that is not a boolean), and hands the `conf` it was
# triggered with back through XCom (`return_value` of the task `echo`).
with DAG(
    dag_id="67dde500_a1c4_4267_b434_c954a1676979",
    description="Vandelay: takes a date and a full_refresh flag, and echoes its conf",
    schedule=None,
    start_date=START,
    catchup=False,
    tags=["customer:vandelay"],
    max_active_runs=1,
    default_args={"retries": 0},
    params={
        "date": Param("2024-01-01", type="string", format="date"),
        "full_refresh": Param(False, type="boolean"),
    },
):

    @task(task_id="echo")
    def echo(**context):
        """The run's conf as the task received it, and the params it resolved to."""
        return {
            "conf": dict(context["dag_run"].conf or {}),
            "params": {
                "date": context["params"]["date"],
                "full_refresh": context["params"]["full_refresh"],
            },
        }

    echo()

# One run at a time, whose task sleeps long enough to be cancelled while
# it runs; the runs triggered behind it wait queued.
with DAG(
    dag_id="bd28c0e8_4f3d_4381_a4ea_bfb0a8a3b424",
    description="Vandelay: sleeps for two minutes, to be cancelled",
    schedule=None,
    start_date=START,
    catchup=False,
    tags=["customer:vandelay"],
    max_active_runs=1,
    default_args={"retries": 0},
):
    BashOperator(task_id="sleep", bash_command="sleep 120")
