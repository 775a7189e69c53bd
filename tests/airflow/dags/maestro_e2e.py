"""DAGs for Maestro's end-to-end tests against a real Apache Airflow 3.

`cargo xtask e2e-airflow` points Airflow's DAG folder here. Each DAG plays
one role in `crates/adapter-airflow/tests/e2e.rs` or
`tests/api/airflow_e2e.rs`, which name them by the same ids; change them
together.

Tasks are BashOperators that finish in about a second, so a whole test
run stays short. Every DAG starts paused (Airflow's default for new DAGs);
the tests unpause what they need.
"""

from __future__ import annotations

import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

START = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


def pipeline(dag_id, tags, command="sleep 1", schedule=None, description=None, max_active_runs=1):
    """One DAG with a single Bash task that runs `command`."""
    with DAG(
        dag_id=dag_id,
        description=description,
        schedule=schedule,
        start_date=START,
        catchup=False,
        tags=tags,
        max_active_runs=max_active_runs,
        default_args={"retries": 0},
    ) as dag:
        BashOperator(task_id="work", bash_command=command)
    return dag


# Customer acme: a fast on-demand DAG, one on a cron schedule, one kept for
# pause and unpause. The extra `team:` tag shows that other tags do not
# matter.
pipeline(
    "9f362da2_da3e_4051_82af_ad4b98242de3",
    ["customer:acme", "team:data"],
    description="Acme: loads the orders, one run at a time",
)
pipeline(
    "cbcf20a2_85e8_45d5_bdb6_4ac87657d9c4",
    ["customer:acme"],
    schedule="0 3 * * *",
    description="Acme: the nightly report",
)
pipeline(
    "d946c383_8024_4991_8ff5_d614a0148c05",
    ["customer:acme"],
    description="Acme: paused and unpaused by the tests",
)

# Customer globex: a DAG whose task always fails, and one that succeeds.
pipeline(
    "e01bd70b_d3a3_4c9d_b21c_13fd23a61210",
    ["customer:globex"],
    command="exit 1",
    description="Globex: always fails",
)
pipeline(
    "aa87333e_4d68_49cf_9995_a8f84fe46fa0",
    ["customer:globex"],
    description="Globex: succeeds",
)

# Customer hooli: one DAG that only the Idempotency-Key test of
# `tests/api/airflow_e2e.rs` triggers, so that it can count the DAG's runs
# exactly. A customer of its own keeps it out of the other tests' lists.
pipeline(
    "39ea25ea_a128_4d37_bc60_a039ca1fa7c0",
    ["customer:hooli"],
    description="Hooli: triggered once per Idempotency-Key",
)

# Visible to no one.
pipeline("ca6e944a_7223_4685_ab23_ab1767fbb112", [], description="No customer tag")
pipeline(
    "8c10f96b_c651_4d6e_8e5a_34c2ceadcec6",
    ["customer:acme", "customer:globex"],
    description="Two customer tags",
)
pipeline("acme_nightly_export", ["customer:acme"], description="dag_id is not a UUID")
pipeline(
    "ca5e64f3-e10d-4f1f-80f7-1821e7cd6029",
    ["customer:acme"],
    description="dag_id is a hyphenated UUID, not the underscored form",
)
