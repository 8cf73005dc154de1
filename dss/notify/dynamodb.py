"""The delivery queue and log in one DynamoDB table: the cloud backend of :class:`DeliveryQueue`.

No process-local state: every Lambda (the API enqueueing and cancelling, the notify daemon delivering)
works on the table alone, and several may do so at once.

**The table** ``dss-<stage>-deliveries`` (created by Terraform; :func:`create_table` for tests), one item
per delivery::

    hash_key  (S)  the delivery id: a hash of (subscription, event), so enqueueing is a conditional put
    sort_key  (S)  "delivery" (the table port's key shape, so the deployment creates every table alike)
    subscription_id (S), created_at (N)   keys of the GSI "by-subscription": the delivery log
    due_queue (S) = "pending", due_at (N) keys of the sparse GSI "due": the queue, present while pending
    owner, event_id, spec (the delivery as JSON, no secret), state, attempts, next_attempt_at,
    lease_owner, lease_expires_at, finished_at, last_error, attempt_log (map: attempt number → record)
    hmac_secret (B)  the secret, removed when the delivery finishes; projected into no index

``due_at`` is when the item next needs a worker: its ``next_attempt_at``, or while leased its
``lease_expires_at`` (when the attempt counts as lost), exactly the order of the SQLite store's queue.

**Concurrency: conditional writes as leases.** Every transition is one ``UpdateItem`` whose condition is
the state it was decided from — a claim requires ``state = pending``, no lease and the attempt count it
read; a finish requires its own lease token; settling a lost attempt requires the expired token; a cancel
requires ``state = pending``. Whoever loses a race gets ``ConditionalCheckFailed`` and moves on, so any
number of consumers (overlapping notify invocations, the embedded worker threads) never share an
attempt; correctness does not depend on the notify Lambda's reserved concurrency. Both indexes are
eventually consistent: a claim re-reads each candidate with a consistent ``GetItem`` before deciding, and
the log may lag a write by a moment (the SQLite store's log does not).

**Why boto3 and not the table port** (`dss.tables`): the port offers put/get/delete/query by key, which
cannot express a conditional update (every transition above), a query on another key (the due queue,
the log by creation time) or a newest-first page; read-modify-write through it would lose races with
concurrent cancels and claims. The client is the port's (`dss.tables.dynamodb.dynamodb_client`).

**Limits**: an item holds the notification payload (at most the 128 KiB of attachments plus the
subscription's query) and at most ``len(delays)`` attempt records, within DynamoDB's 400 KB per item.
The due index has one partition ("pending"), which serves a few hundred claims a second, far more than
webhook traffic needs; shard ``due_queue`` if that ever changes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from dss.aws import dynamodb_pages, error_code
from dss.config import DEFAULT_NOTIFY_DELAYS
from dss.notify.delivery import Delivery
from dss.notify.queue import (
    LOST,
    MAX_LIMIT,
    AttemptRecord,
    Claim,
    DeliveryQueue,
    DeliveryRecord,
    check_state,
)
from dss.notify.transport import AttemptResult, Transport
from dss.notify.urlsafety import AllowList
from dss.tables import TableError

__all__ = ["DynamoDBDeliveryStore", "TABLE", "BY_SUBSCRIPTION", "DUE", "table_schema", "create_table"]

logger = logging.getLogger(__name__)

TABLE = "deliveries"  # opened as <prefix><TABLE>, i.e. dss-<stage>-deliveries
BY_SUBSCRIPTION = "by-subscription"
DUE = "due"
_SORT_KEY = "delivery"
_PENDING = "pending"
_LARGEST = 9.9e125  # DynamoDB numbers stop just short of 1e126
_CANDIDATES = 25  # due index entries read per page while looking for one to claim
# What the log reads (and the by-subscription index holds): everything but the secret.
_LOG_ATTRIBUTES = ("hash_key", "subscription_id", "owner", "event_id", "spec", "state", "created_at",
                   "next_attempt_at", "lease_owner", "finished_at", "last_error", "attempt_log")
# Cleared whenever a delivery finishes (delivered or dead).
_FINISHED_REMOVE = "REMOVE next_attempt_at, lease_owner, lease_expires_at, hmac_secret, due_queue, due_at"


def table_schema(name: str) -> dict[str, Any]:
    """The ``CreateTable`` arguments of the deliveries table (what Terraform creates in a deployment)."""
    attributes = {"hash_key": "S", "sort_key": "S", "subscription_id": "S", "created_at": "N",
                  "due_queue": "S", "due_at": "N"}
    return {
        "TableName": name, "BillingMode": "PAY_PER_REQUEST",
        "KeySchema": [{"AttributeName": "hash_key", "KeyType": "HASH"},
                      {"AttributeName": "sort_key", "KeyType": "RANGE"}],
        "AttributeDefinitions": [{"AttributeName": k, "AttributeType": t} for k, t in attributes.items()],
        "GlobalSecondaryIndexes": [
            {"IndexName": BY_SUBSCRIPTION,
             "KeySchema": [{"AttributeName": "subscription_id", "KeyType": "HASH"},
                           {"AttributeName": "created_at", "KeyType": "RANGE"}],
             "Projection": {"ProjectionType": "INCLUDE",
                            "NonKeyAttributes": [a for a in _LOG_ATTRIBUTES
                                                 if a not in ("hash_key", "subscription_id", "created_at")]}},
            {"IndexName": DUE,
             "KeySchema": [{"AttributeName": "due_queue", "KeyType": "HASH"},
                           {"AttributeName": "due_at", "KeyType": "RANGE"}],
             "Projection": {"ProjectionType": "KEYS_ONLY"}},
        ],
    }


def create_table(client: Any, name: str) -> None:
    """Create the deliveries table unless it exists, and wait until it is active (tests, trying it by hand)."""
    from botocore.exceptions import ClientError

    try:
        client.create_table(**table_schema(name))
    except ClientError as e:
        if error_code(e) != "ResourceInUseException":
            raise TableError(f"cannot create DynamoDB table {name!r}: {e}") from e
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})


def delivery_id(subscription_id: str, event_id: str) -> str:
    """The id of the delivery of ``event_id`` to ``subscription_id``: 32 hex digits, like the SQLite store's."""
    return hashlib.sha256(f"{subscription_id}\n{event_id}".encode()).hexdigest()[:32]


# -- DynamoDB attribute values ----------------------------------------------------------------------

def _av(value: Any) -> dict[str, Any]:
    """A Python value as a DynamoDB attribute value. Numbers go as repr() strings, so floats round-trip."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            raise ValueError("NaN is not a DynamoDB number")
        value = math.copysign(_LARGEST, value)  # "forever" (prune everything finished) as DynamoDB's largest
    if isinstance(value, int | float):
        return {"N": repr(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bytes):
        return {"B": value}
    if isinstance(value, Mapping):
        return {"M": {str(k): _av(v) for k, v in value.items()}}
    raise TypeError(f"no DynamoDB attribute value for {type(value).__name__}")


def _py(value: Mapping[str, Any]) -> Any:
    (kind, raw), = value.items()
    if kind == "N":
        number = float(raw)
        return int(number) if number.is_integer() and "." not in raw and "e" not in raw.lower() else number
    if kind == "M":
        return {k: _py(v) for k, v in raw.items()}
    if kind == "NULL":
        return None
    return raw  # S, B, BOOL


def _item(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _py(v) for k, v in raw.items()}


class _ConditionFailed(Exception):
    """Another writer changed the item first (ConditionalCheckFailed)."""


def _attempt_json(number: int, started_at: float, result: AttemptResult | None, outcome: str) -> dict[str, Any]:
    return {"number": number, "started_at": started_at, "duration": result.duration if result else None,
            "status_code": result.status_code if result else None, "error": result.error if result else None,
            "outcome": outcome}


class DynamoDBDeliveryStore(DeliveryQueue):
    """The delivery queue and log over the DynamoDB table ``table_name``.

    ``client`` is a boto3 DynamoDB client (built once per process and shared); without one, a client is
    built from boto3's own configuration (``AWS_ENDPOINT_URL`` and friends) for ``region``.
    ``create_if_missing`` creates the table (deployments create it with Terraform).
    """

    def __init__(self, table_name: str, *, client: Any = None, region: str | None = None,
                 create_if_missing: bool = False, transport: Transport | None = None,
                 delays: Sequence[float] = DEFAULT_NOTIFY_DELAYS, timeout: float = 60.0,
                 allowlist: AllowList | str | Iterable[str] | None = None, lease_seconds: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(transport=transport, delays=delays, timeout=timeout, allowlist=allowlist,
                         lease_seconds=lease_seconds, clock=clock)
        if client is None:
            from dss.tables.dynamodb import dynamodb_client
            client = dynamodb_client(region)
        self.table_name = table_name
        self._client = client
        if create_if_missing:
            create_table(client, table_name)

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> DynamoDBDeliveryStore:
        """The store of a `dss.config.Config` whose ``tables_url`` is ``dynamodb://[region]``: the table
        ``dss-<stage>-deliveries``, beside the deployment's other tables."""
        region = config.tables_url.partition("://")[2].strip("/") or None
        return cls(f"dss-{config.stage}-{TABLE}", region=region, delays=config.notify_delays,
                   timeout=config.notify_timeout, allowlist=config.callback_allowlist, **kwargs)

    def close(self) -> None:
        pass  # boto3 clients hold no connections that need closing

    # -- producers ---------------------------------------------------------------------------------

    def enqueue(self, delivery: Delivery, *, now: float | None = None) -> str:
        now = self._now(now)
        key = delivery_id(delivery.subscription_id, delivery.event_id)
        due = now + self.delays[0]
        item = {"hash_key": key, "sort_key": _SORT_KEY, "subscription_id": delivery.subscription_id,
                "owner": delivery.owner, "event_id": delivery.event_id, "spec": json.dumps(delivery.to_json()),
                "state": _PENDING, "attempts": 0, "created_at": now, "next_attempt_at": due,
                "due_queue": _PENDING, "due_at": due, "attempt_log": {}}
        if delivery.hmac_secret_key is not None:
            item["hmac_secret"] = delivery.hmac_secret_key.reveal()
        with contextlib.suppress(_ConditionFailed):  # already queued: the first one stands
            self._call("put_item", Item={k: _av(v) for k, v in item.items()},
                       ConditionExpression="attribute_not_exists(hash_key)")
        logger.debug("Queued delivery %s for subscription %s", key, delivery.subscription_id)
        self._notify_listeners()
        return key

    def cancel(self, subscription_id: str, *, reason: str = "subscription deleted",
               now: float | None = None) -> int:
        now = self._now(now)
        cancelled = 0
        for item in self._log_items(subscription_id, {"state": _PENDING}, None):
            with contextlib.suppress(_ConditionFailed):
                self._update(item["hash_key"], f"SET #state = :dead, finished_at = :now, last_error = :reason"
                             f" {_FINISHED_REMOVE}", "#state = :pending",
                             {":dead": "dead", ":now": now, ":reason": reason, ":pending": _PENDING})
                cancelled += 1
        return cancelled

    def prune(self, finished_before: float) -> int:
        condition = "#state <> :pending AND finished_at < :before"
        values = {":pending": _PENDING, ":before": finished_before}
        pruned = 0
        for page in self._pages("scan", ProjectionExpression="hash_key", FilterExpression=condition,
                                ExpressionAttributeNames={"#state": "state"},
                                ExpressionAttributeValues={k: _av(v) for k, v in values.items()}):
            for raw in page.get("Items", []):
                with contextlib.suppress(_ConditionFailed):
                    self._call("delete_item", Key=self._key(raw["hash_key"]["S"]), ConditionExpression=condition,
                               ExpressionAttributeNames={"#state": "state"},
                               ExpressionAttributeValues={k: _av(v) for k, v in values.items()})
                    pruned += 1
        return pruned

    # -- workers -----------------------------------------------------------------------------------

    def next_due_at(self) -> float | None:
        for key in self._due_keys(None, limit=1):
            return key[1]
        return None

    def claim(self, now: float | None = None) -> Claim | None:
        now = self._now(now)
        for key, _ in self._due_keys(now, limit=_CANDIDATES):
            item = self._get(key)
            if item is None or item.get("state") != _PENDING:
                continue  # the index lags the table
            if item.get("lease_owner") is not None:
                if item["lease_expires_at"] > now or not self._settle_lost(item, now):
                    continue
                item = self._get(key)
                if item is None or item.get("state") != _PENDING:
                    continue
            if item.get("lease_owner") is None and item["next_attempt_at"] <= now:
                claim = self._try_claim(item, now)
                if claim is not None:
                    return claim
        return None

    def finish(self, claim: Claim, result: AttemptResult, *, now: float | None = None) -> None:
        now = self._now(now)
        record = _attempt_json(claim.attempt, claim.started_at, result, "delivered" if result.delivered else "failed")
        try:
            self._settle(claim.delivery_id, claim.attempt, result, now, record,
                         "lease_owner = :token", {":token": claim.token})
        except _ConditionFailed:
            self._finish_late(claim, result, now, record)
        self._log_outcome(claim, result)

    # -- owner API ---------------------------------------------------------------------------------

    def deliveries(self, subscription_id: str, *, owner: str | None = None, limit: int = 100,
                   state: str | None = None, before: float | None = None) -> list[DeliveryRecord]:
        check_state(state)
        limit = max(1, min(int(limit), MAX_LIMIT))
        filters = {k: v for k, v in (("owner", owner), ("state", state)) if v is not None}
        items = []
        for item in self._log_items(subscription_id, filters, before):
            items.append(item)
            if len(items) >= limit:
                break
        items.sort(key=lambda i: (-i["created_at"], i["hash_key"]))  # ties in created_at: by id, like SQLite
        return [_record(item) for item in items]

    def get(self, delivery_id: str) -> DeliveryRecord | None:
        if not isinstance(delivery_id, str) or not delivery_id:
            return None
        item = self._get(delivery_id, projection=_LOG_ATTRIBUTES)
        return None if item is None else _record(item)

    # -- internals ---------------------------------------------------------------------------------

    @staticmethod
    def _key(key: str) -> dict[str, Any]:
        return {"hash_key": {"S": key}, "sort_key": {"S": _SORT_KEY}}

    def _call(self, operation: str, **arguments: Any) -> Any:
        """One DynamoDB call on the table; errors become TableError (or _ConditionFailed)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, operation)(TableName=self.table_name, **arguments)
        except ClientError as e:
            code = error_code(e)
            if code == "ConditionalCheckFailedException":
                raise _ConditionFailed() from e
            if code == "ResourceNotFoundException":
                raise TableError(f"DynamoDB table {self.table_name!r} (or its index) does not exist") from e
            raise TableError(f"DynamoDB table {self.table_name!r}: {code or e}") from e
        except BotoCoreError as e:
            raise TableError(f"DynamoDB table {self.table_name!r}: {e}") from e

    def _pages(self, operation: str, **arguments: Any) -> Iterator[dict[str, Any]]:
        return dynamodb_pages(self._call, operation, **arguments)

    def _get(self, key: str, projection: Sequence[str] | None = None) -> dict[str, Any] | None:
        arguments: dict[str, Any] = {"Key": self._key(key), "ConsistentRead": True}
        if projection:
            names = {f"#a{i}": name for i, name in enumerate(projection)}
            arguments.update(ProjectionExpression=", ".join(names), ExpressionAttributeNames=names)
        raw = self._call("get_item", **arguments).get("Item")
        return _item(raw) if raw else None

    def _update(self, key: str, expression: str, condition: str, values: Mapping[str, Any],
                names: Mapping[str, str] | None = None) -> None:
        # DynamoDB refuses names that the expressions do not use, so #state is only passed where it is.
        uses_state = "#state" in expression or "#state" in condition
        self._call("update_item", Key=self._key(key), UpdateExpression=expression, ConditionExpression=condition,
                   ExpressionAttributeNames={**({"#state": "state"} if uses_state else {}), **(names or {})},
                   ExpressionAttributeValues={k: _av(v) for k, v in values.items()})

    def _due_keys(self, now: float | None, *, limit: int) -> Iterator[tuple[str, float]]:
        """(delivery id, due_at) from the due index, earliest first; only those due by ``now`` if given."""
        condition = "due_queue = :q" + ("" if now is None else " AND due_at <= :now")
        values = {":q": _PENDING, **({} if now is None else {":now": now})}
        for page in self._pages("query", IndexName=DUE, KeyConditionExpression=condition, Limit=limit,
                                ExpressionAttributeValues={k: _av(v) for k, v in values.items()}):
            for raw in page.get("Items", []):
                yield raw["hash_key"]["S"], float(raw["due_at"]["N"])

    def _log_items(self, subscription_id: str, filters: Mapping[str, str],
                   before: float | None) -> Iterator[dict[str, Any]]:
        """Log items of a subscription, newest first, matching ``filters`` (attribute → value)."""
        condition = "subscription_id = :s" + ("" if before is None else " AND created_at < :before")
        values: dict[str, Any] = {":s": subscription_id, **({} if before is None else {":before": before})}
        names = {f"#a{i}": name for i, name in enumerate(_LOG_ATTRIBUTES)}
        arguments: dict[str, Any] = {"IndexName": BY_SUBSCRIPTION, "KeyConditionExpression": condition,
                                     "ScanIndexForward": False, "ProjectionExpression": ", ".join(names)}
        if filters:
            clauses = []
            for i, (attribute, value) in enumerate(filters.items()):
                names[f"#f{i}"] = attribute
                values[f":f{i}"] = value
                clauses.append(f"#f{i} = :f{i}")
            arguments["FilterExpression"] = " AND ".join(clauses)
        for page in self._pages("query", **arguments, ExpressionAttributeNames=names,
                                ExpressionAttributeValues={k: _av(v) for k, v in values.items()}):
            for raw in page.get("Items", []):
                yield _item(raw)

    def _try_claim(self, item: Mapping[str, Any], now: float) -> Claim | None:
        key = item["hash_key"]
        try:
            delivery = Delivery.from_json(json.loads(item["spec"]), item.get("hmac_secret"))
        except (ValueError, TypeError, KeyError) as e:
            # An item this code cannot read would otherwise be claimed, and fail, forever.
            logger.error("Delivery %s is unreadable, dead-lettering it: %s", key, e)
            with contextlib.suppress(_ConditionFailed):
                self._settle(key, self.max_attempts, AttemptResult(False, None, f"unreadable: {e}"), now, None,
                             "#state = :pending AND attribute_not_exists(lease_owner)", {":pending": _PENDING})
            return None
        attempt = int(item["attempts"]) + 1
        token = uuid.uuid4().hex
        expires = now + self.lease_seconds
        try:
            self._update(key, "SET attempts = :attempt, lease_owner = :token, lease_expires_at = :expires,"
                              " due_at = :expires, attempt_log.#n = :record",
                         "#state = :pending AND attribute_not_exists(lease_owner) AND attempts = :seen"
                         " AND next_attempt_at <= :now",
                         {":attempt": attempt, ":token": token, ":expires": expires, ":pending": _PENDING,
                          ":seen": attempt - 1, ":now": now,
                          ":record": _attempt_json(attempt, now, None, "in_flight")},
                         {"#n": str(attempt)})
        except _ConditionFailed:
            return None  # another worker claimed (or someone cancelled) it first
        return Claim(key, token, attempt, now, delivery)

    def _settle(self, key: str, attempts: int, result: AttemptResult, now: float, record: Mapping[str, Any] | None,
                condition: str, condition_values: Mapping[str, Any]) -> None:
        """Move a delivery on after attempt ``attempts`` (recording ``record`` as that attempt), if
        ``condition`` still holds; raises _ConditionFailed otherwise."""
        values: dict[str, Any] = dict(condition_values)
        names: dict[str, str] = {}
        record_set = ""
        if record is not None:
            record_set = ", attempt_log.#n = :record"
            values[":record"] = record
            names["#n"] = str(record["number"])
        if result.delivered:
            expression = f"SET #state = :final, finished_at = :now{record_set} {_FINISHED_REMOVE}, last_error"
            values.update({":final": "delivered", ":now": now})
        elif attempts >= self.max_attempts:
            expression = f"SET #state = :final, finished_at = :now, last_error = :error{record_set} {_FINISHED_REMOVE}"
            values.update({":final": "dead", ":now": now, ":error": result.error})
        else:
            expression = (f"SET next_attempt_at = :next, due_at = :next, last_error = :error{record_set}"
                          " REMOVE lease_owner, lease_expires_at")
            values.update({":next": now + self.delays[attempts], ":error": result.error})
        self._update(key, expression, condition, values, names)

    def _settle_lost(self, item: Mapping[str, Any], now: float) -> bool:
        """Settle an expired lease's open attempt as lost; returns whether this call did it."""
        attempts = int(item["attempts"])
        logger.warning("Delivery %s: attempt %d lost (lease expired)", item["hash_key"], attempts)
        started = (item.get("attempt_log") or {}).get(str(attempts), {}).get("started_at", item["lease_expires_at"])
        lost = AttemptResult(False, None, LOST)
        record = _attempt_json(attempts, started, lost, "lost")
        try:
            self._settle(item["hash_key"], attempts, lost, item["lease_expires_at"], record,
                         "lease_owner = :token AND lease_expires_at <= :claimed_at",
                         {":token": item["lease_owner"], ":claimed_at": now})
        except _ConditionFailed:
            return False
        return True

    def _finish_late(self, claim: Claim, result: AttemptResult, now: float, record: Mapping[str, Any]) -> None:
        # The lease expired (and the attempt was settled as lost) or the delivery was cancelled. A late
        # success still counts if nobody else is working on the delivery; otherwise the next attempt may
        # duplicate it (documented). Either way the attempt's real outcome is recorded.
        logger.warning("Delivery %s: attempt %d finished after its lease expired", claim.delivery_id,
                       claim.attempt)
        if result.delivered:
            with contextlib.suppress(_ConditionFailed):
                self._settle(claim.delivery_id, claim.attempt, result, now, record,
                             "#state = :pending AND attribute_not_exists(lease_owner)", {":pending": _PENDING})
                return
        with contextlib.suppress(_ConditionFailed):  # the delivery may have been pruned meanwhile
            self._update(claim.delivery_id, "SET attempt_log.#n = :record", "attribute_exists(hash_key)",
                         {":record": record}, {"#n": str(claim.attempt)})


def _record(item: Mapping[str, Any]) -> DeliveryRecord:
    spec = json.loads(item.get("spec") or "{}")
    in_flight = item.get("lease_owner") is not None
    log = item.get("attempt_log") or {}
    attempts = tuple(AttemptRecord(int(a["number"]), a["started_at"], a.get("duration"), a.get("status_code"),
                                   a.get("error"), a["outcome"])
                     for a in sorted(log.values(), key=lambda a: int(a["number"])))
    return DeliveryRecord(
        delivery_id=item["hash_key"], subscription_id=item["subscription_id"], owner=item["owner"],
        event_id=item["event_id"], callback_url=spec.get("callback_url", ""), method=spec.get("method", ""),
        encoding=spec.get("encoding", ""), state=item["state"], in_flight=in_flight, created_at=item["created_at"],
        next_attempt_at=None if in_flight or item["state"] != _PENDING else item.get("next_attempt_at"),
        finished_at=item.get("finished_at"), last_error=item.get("last_error"), attempts=attempts)
