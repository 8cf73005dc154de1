"""Run a server test on either delivery store: SQLite (the embedded default) or DynamoDB on the moto server.

Mark a test with ``DELIVERY_STORES`` and add ``delivery_store_env`` to the server's environment (its
``dss_env``). For ``dynamodb`` the server gets ``DSS_TABLES_URL=dynamodb://`` and a stage of its own, whose
tables (every table the runtime opens, the deliveries table with its indexes) are created here first,
as Terraform creates them in a deployment.
"""
from __future__ import annotations

import uuid

import pytest

__all__ = ["DELIVERY_STORES", "delivery_store", "delivery_store_env", "create_runtime_tables"]

DELIVERY_STORES = pytest.mark.parametrize("delivery_store", ["sqlite", "dynamodb"], indirect=True)


def create_runtime_tables(stage: str) -> None:
    """Create, on the DynamoDB that boto3 is pointed at, every table a `Runtime` of ``stage`` opens."""
    import boto3

    from dss.checkout.records import TABLE as CHECKOUT_TABLE
    from dss.collections.owner_index import TABLE as COLLECTIONS_TABLE
    from dss.files import ASYNC_STATE_TABLE
    from dss.notify.dynamodb import TABLE as DELIVERIES_TABLE
    from dss.notify.dynamodb import create_table
    from dss.tables.dynamodb import DynamoDBTable

    client = boto3.client("dynamodb")
    for name in ("subscriptions", "owners", ASYNC_STATE_TABLE, COLLECTIONS_TABLE, CHECKOUT_TABLE):
        DynamoDBTable(f"dss-{stage}-{name}", client=client, create_if_missing=True)
    create_table(client, f"dss-{stage}-{DELIVERIES_TABLE}")


@pytest.fixture
def delivery_store(request: pytest.FixtureRequest) -> str:
    """The delivery store under test: the parameter of ``DELIVERY_STORES``, else the embedded default."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def delivery_store_env(delivery_store: str, request: pytest.FixtureRequest) -> dict[str, str]:
    if delivery_store == "sqlite":
        return {}
    request.getfixturevalue("aws_env")
    stage = f"t{uuid.uuid4().hex[:10]}"
    create_runtime_tables(stage)
    return {"DSS_TABLES_URL": "dynamodb://", "DSS_DEPLOYMENT_STAGE": stage}
