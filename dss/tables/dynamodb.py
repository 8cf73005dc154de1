"""Tables in DynamoDB: one DynamoDB table per name, string keys ``hash_key``/``sort_key``, the body as a JSON
string attribute ``body`` (the original DSS's layout, so its tables can be read as they are).

Tables are on-demand (PAY_PER_REQUEST). Terraform creates them in a deployment; ``create_if_missing``
creates one on open, for tests and for trying the cloud backend by hand. boto3 is imported lazily, and
the endpoint, region and credentials come from boto3's own configuration chain.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from dss.aws import dynamodb_pages, error_code
from dss.tables import Table, TableConflict, TableError

__all__ = ["DynamoDBTable", "dynamodb_client"]


def dynamodb_client(region: str | None = None) -> Any:
    from dss import aws

    return aws.client("dynamodb", region_name=region)


class DynamoDBTable(Table):
    def __init__(self, name: str, *, region: str | None = None, client: Any = None,
                 create_if_missing: bool = False) -> None:
        super().__init__(name)
        self._client = client or dynamodb_client(region)
        if create_if_missing:
            self._create()

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            code = error_code(e)
            if code == "ConditionalCheckFailedException":  # only conditional puts carry a condition
                raise TableConflict(f"an item already exists under those keys in {self.name!r}") from e
            if code == "ResourceNotFoundException":
                raise TableError(f"DynamoDB table {self.name!r} does not exist") from e
            raise TableError(f"DynamoDB table {self.name!r}: {e}") from e
        except BotoCoreError as e:
            raise TableError(f"DynamoDB table {self.name!r}: {e}") from e

    def _create(self) -> None:
        from botocore.exceptions import ClientError

        with self._translated():
            try:
                self._client.create_table(
                    TableName=self.name, BillingMode="PAY_PER_REQUEST",
                    KeySchema=[{"AttributeName": "hash_key", "KeyType": "HASH"},
                               {"AttributeName": "sort_key", "KeyType": "RANGE"}],
                    AttributeDefinitions=[{"AttributeName": "hash_key", "AttributeType": "S"},
                                          {"AttributeName": "sort_key", "AttributeType": "S"}])
            except ClientError as e:
                if error_code(e) != "ResourceInUseException":  # it exists, or another process is creating it
                    raise
            self._client.get_waiter("table_exists").wait(TableName=self.name,
                                                         WaiterConfig={"Delay": 1, "MaxAttempts": 60})

    @staticmethod
    def _key(hash_key: str, sort_key: str) -> dict[str, Any]:
        return {"hash_key": {"S": hash_key}, "sort_key": {"S": sort_key}}

    def _put(self, hash_key: str, sort_key: str, body: dict[str, Any], if_absent: bool) -> None:
        item = {**self._key(hash_key, sort_key), "body": {"S": json.dumps(body)}}
        condition = {"ConditionExpression": "attribute_not_exists(hash_key)"} if if_absent else {}
        self._call("put_item", Item=item, **condition)

    def _get(self, hash_key: str, sort_key: str) -> dict[str, Any] | None:
        item = self._call("get_item", Key=self._key(hash_key, sort_key), ConsistentRead=True).get("Item")
        return json.loads(item["body"]["S"]) if item else None

    def _delete(self, hash_key: str, sort_key: str) -> bool:
        response = self._call("delete_item", Key=self._key(hash_key, sort_key), ReturnValues="ALL_OLD")
        return bool(response.get("Attributes"))

    def _pages(self, operation: str, **arguments: Any) -> Iterator[dict[str, Any]]:
        return dynamodb_pages(self._call, operation, **arguments)

    def _call(self, operation: str, **arguments: Any) -> dict[str, Any]:
        """One DynamoDB call on the table; errors become TableError (TableConflict for a failed condition)."""
        with self._translated():
            return getattr(self._client, operation)(TableName=self.name, **arguments)

    def _query_arguments(self, hash_key: str) -> dict[str, Any]:
        return {"KeyConditionExpression": "hash_key = :h", "ExpressionAttributeValues": {":h": {"S": hash_key}},
                "ConsistentRead": True}

    def _query(self, hash_key: str) -> list[dict[str, Any]]:
        pages = self._pages("query", ScanIndexForward=True, **self._query_arguments(hash_key))
        return [json.loads(item["body"]["S"]) for page in pages for item in page.get("Items", [])]

    def _query_slice(self, hash_key: str, offset: int, limit: int) -> list[dict[str, Any]]:
        # DynamoDB has no offset: read in key order and stop as soon as the slice is complete.
        wanted: list[dict[str, Any]] = []
        seen = 0
        if limit == 0:
            return wanted
        for page in self._pages("query", ScanIndexForward=True, **self._query_arguments(hash_key)):
            for item in page.get("Items", []):
                if seen >= offset:
                    wanted.append(json.loads(item["body"]["S"]))
                seen += 1
                if len(wanted) >= limit:
                    return wanted
        return wanted

    def _count(self, hash_key: str) -> int:
        return sum(page.get("Count", 0) for page in self._pages("query", Select="COUNT",
                                                                 **self._query_arguments(hash_key)))

    def _scan(self) -> Iterator[dict[str, Any]]:
        for page in self._pages("scan"):
            for item in page.get("Items", []):
                yield json.loads(item["body"]["S"])
