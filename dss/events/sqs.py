"""The cloud event bus: SNS → one SQS queue per handler, each with its own dead-letter queue.

Selected by `DSS_QUEUE_URL`:

- `sns://<name>` publishes each event once to the SNS topic `<name>`, which fans it out to the queues
  `<name>-<handler>` (raw delivery; a subscription filter on the `handlers` attribute lets a publication
  name only some handlers, as the reconcile pass does);
- `sqs://<name>` sends the event to each `<name>-<handler>` queue itself (no topic needed);
- an empty name (`sns://`) means `bus_name(stage)`, `dss-events-<stage>`. Query parameters:
  `max_receives` (receives before a message moves to its queue's dead-letter queue `<name>-<handler>-dlq`,
  default 5), `visibility` (seconds a received message stays hidden before it is tried again, default
  320) and `intent_delay` (below; default 120, 0 turns intents off). `max_receives` and `visibility` are
  properties of the queues, so they matter where the queues are made: `resources()` → `provision()`
  (tests, and the description Terraform is generated from or checked against).

Messages are the `Event` JSON (`{"replica", "key", "action"}`), plus `"intent": true` on intents, or S3's
object events of the `aws` replica's bucket (`dss.events.s3_events`): the bucket notifies its own topic
(`resources(…, sources=…)`), every handler queue is subscribed to it without a filter, and one such message
may hold several records, each an `Event` for the handler. A body that cannot be decoded is logged and
dropped: delivering it again could never succeed. A daemon
Lambda with an SQS trigger calls `SQSEventBus.handle(handler_name, handler, lambda_event)`: each record is
decoded back into its `Event` and given to the handler; a handler that raises is reported in
`batchItemFailures` (the Lambda partial-batch response), so SQS delivers it again after the visibility
timeout and, after `max_receives` receives, moves it to the dead-letter queue. `redrive()` moves dead
letters back (`scripts/dss-ops.py events redrive`). `Deferred` is not a failure: the message's visibility is
set to the requested delay. SQS counts every receive, a deferral too, so a message whose next receive would
be its last is replaced by a fresh copy (delayed the same way) instead: a long wait never dead-letters it.

**Intents** (the window between a commit and its publication). A writer does `with bus.intent(events):
<commit>`. On entry this bus sends each event, marked as an intent, straight to every handler queue with
`DelaySeconds = intent_delay` (at most 900, SQS's limit): a durable announcement made before the commit.
On a normal exit it publishes the events as usual, so replication is not delayed. When the intent is
delivered, the handler runs if the key exists and the message is dropped if it does not (the write failed,
or was withdrawn). So a writer killed between its commit and its publication still has its write
replicated and indexed, `intent_delay` seconds later, without any scan. The cost is one more delivery per
write and handler, which the idempotent handlers settle with a HEAD or a document comparison. A commit
slower than `intent_delay` whose writer then dies before publishing is left to the reconcile pass
(`dss.events.reconcile`, run on a schedule in the cloud); writes made behind the server's back reach the bus
through the replica buckets' notifications (S3 events here, GCS's through `dss.events.gcs_relay`), and the
reconcile pass finds any that were lost.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dss.events import Event, s3_events
from dss.events.bus import Deferred, EventBus, Handler, Intent, Message

__all__ = ["SQSEventBus", "BusSettings", "bus_name", "resources", "provision", "parse_queue_url", "decode",
           "decode_all", "SCHEMES", "MAX_DELAY"]

logger = logging.getLogger(__name__)

SCHEMES = ("sns", "sqs")
MAX_DELAY = 900  # seconds: SQS's limit on DelaySeconds
MAX_VISIBILITY = 43200  # seconds: SQS's limit on a visibility timeout
RETENTION = 14 * 24 * 3600  # seconds a message is kept, in the queues and their dead-letter queues
_ATTRIBUTE = "handlers"  # SNS message attribute naming the handlers a publication is for


def bus_name(stage: str) -> str:
    """The name of a deployment stage's topic, and the prefix of its queues' names."""
    return f"dss-events-{stage}"


@dataclass(frozen=True)
class BusSettings:
    scheme: str
    name: str
    max_receives: int = 5
    visibility: int = 320
    intent_delay: int = 120


def _bounded(query: Mapping[str, list[str]], key: str, default: int, low: int, high: int) -> int:
    if not query.get(key):
        return default
    raw = query[key][-1]
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"DSS_QUEUE_URL: {key} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ValueError(f"DSS_QUEUE_URL: {key} must be between {low} and {high}, got {value}")
    return value


def parse_queue_url(url: str, stage: str) -> BusSettings:
    """`sns://[name][?max_receives=N&visibility=S&intent_delay=S]` or the same with `sqs://`."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"not an SNS/SQS event bus URL: {url!r}")
    query = parse_qs(parts.query)
    return BusSettings(parts.scheme, parts.netloc or bus_name(stage),
                       max_receives=_bounded(query, "max_receives", 5, 1, 1000),
                       visibility=_bounded(query, "visibility", 320, 0, MAX_VISIBILITY),
                       intent_delay=_bounded(query, "intent_delay", 120, 0, MAX_DELAY))


def resources(settings: BusSettings, handlers: Sequence[str], sources: Sequence[str] = ()) -> dict[str, Any]:
    """The resources a bus needs, as plain JSON: what `provision()` creates, and what the Terraform of
    the deployment is generated from or checked against. `sources` are topics whose every message goes to
    every handler queue (no filter): the S3 events topic (`dss.events.s3_events.topic_name`)."""
    return {
        "topic": settings.name,
        "sources": list(sources),
        "queues": {handler: {"name": f"{settings.name}-{handler}",
                             "visibility_timeout": settings.visibility,
                             "retention": RETENTION,
                             "dead_letter_queue": f"{settings.name}-{handler}-dlq",
                             "max_receive_count": settings.max_receives}
                   for handler in handlers},
    }


def provision(description: Mapping[str, Any], sns: Any, sqs: Any) -> dict[str, str]:
    """Create (or find: every call is idempotent) the topics, queues, dead-letter queues and subscriptions
    of `description` (`resources()`); returns the topic ARN, each source topic's ARN and each queue's URL by
    name."""
    topic_arn = sns.create_topic(Name=description["topic"])["TopicArn"]
    sources = [sns.create_topic(Name=name)["TopicArn"] for name in description.get("sources", ())]
    made = {"topic": topic_arn, **dict(zip(description.get("sources", ()), sources))}
    for handler, queue in description["queues"].items():
        dlq_url = sqs.create_queue(QueueName=queue["dead_letter_queue"],
                                   Attributes={"MessageRetentionPeriod": str(queue["retention"])})["QueueUrl"]
        dlq_arn = _queue_arn(sqs, dlq_url)
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": queue["max_receive_count"]}
        url = sqs.create_queue(QueueName=queue["name"], Attributes={
            "VisibilityTimeout": str(queue["visibility_timeout"]),
            "MessageRetentionPeriod": str(queue["retention"]),
            "RedrivePolicy": json.dumps(redrive)})["QueueUrl"]
        arn = _queue_arn(sqs, url)
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": "sns.amazonaws.com"},
                           "Action": "sqs:SendMessage", "Resource": arn,
                           "Condition": {"ArnEquals": {"aws:SourceArn": [topic_arn, *sources]}}}]})})
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn, ReturnSubscriptionArn=True,
                      Attributes={"RawMessageDelivery": "true",
                                  "FilterPolicy": json.dumps({_ATTRIBUTE: [handler]})})
        for source in sources:
            sns.subscribe(TopicArn=source, Protocol="sqs", Endpoint=arn, ReturnSubscriptionArn=True,
                          Attributes={"RawMessageDelivery": "true"})
        made[queue["name"]], made[queue["dead_letter_queue"]] = url, dlq_url
    return made


def _queue_arn(sqs: Any, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def _body(event: Event, intent: bool = False) -> str:
    fields = json.loads(event.to_json())
    return json.dumps({**fields, "intent": True} if intent else fields, separators=(",", ":"))


def _fields(body: str) -> dict[str, Any]:
    fields = json.loads(body)
    if isinstance(fields, dict) and fields.get("Type") == "Notification" and isinstance(fields.get("Message"), str):
        fields = json.loads(fields["Message"])
    if not isinstance(fields, dict):
        raise ValueError("the message is not a JSON object")
    return fields


def decode(body: str) -> tuple[Event, bool]:
    """An SQS message body of the bus's own → (its Event, whether it is an intent). An SNS envelope (a
    subscription without raw delivery) is unwrapped."""
    fields = _fields(body)
    intent = bool(fields.pop("intent", False))
    return Event(**fields), intent


def decode_all(body: str, s3_bucket: str | None = None) -> list[tuple[Event, bool]]:
    """Every (Event, intent) of an SQS message body: the bus's own (one), or S3's object events of
    `s3_bucket` (the `aws` replica's; none if None), raw or in an SNS envelope. A body that is neither is
    logged and gives nothing."""
    try:
        fields = _fields(body)
        if s3_events.is_s3_message(fields):
            return [(event, False) for event in s3_events.events(fields, s3_bucket)]
        intent = fields.pop("intent", False)
        event = Event(**fields)
        if not all(isinstance(v, str) for v in (event.replica, event.key, event.action)) or \
                not isinstance(intent, bool):
            raise ValueError("a field has the wrong type")
        return [(event, intent)]
    except (ValueError, TypeError) as exc:
        logger.warning("Dropping a message that is not an event (%s): %.200r", exc, body)
        return []


class _DelayedIntent(Intent):
    """Intents sent to the queues, delayed, before the commit (see the module docstring)."""

    def __init__(self, bus: SQSEventBus, events: Sequence[Event]) -> None:
        super().__init__(bus, events)
        for event in self.events:
            bus._send(event, bus.handlers, intent=True, delay=bus.settings.intent_delay)


class SQSEventBus(EventBus):
    """Clients are injected (built once per process or Lambda cold start); `open()` builds them."""

    def __init__(self, settings: BusSettings, handlers: Sequence[str], sns: Any, sqs: Any,
                 topic_arn: str | None = None) -> None:
        self.settings = settings
        self.handlers = tuple(handlers)
        self.sns, self.sqs = sns, sqs
        self._topic_arn = topic_arn
        self._urls: dict[str, str] = {}

    @classmethod
    def open(cls, url: str, handlers: Sequence[str], stage: str) -> SQSEventBus:
        from dss import aws

        return cls(parse_queue_url(url, stage), handlers, aws.client("sns"), aws.client("sqs"))

    def resources(self) -> dict[str, Any]:
        return resources(self.settings, self.handlers)

    # --- names ---------------------------------------------------------------------------------
    def queue_name(self, handler: str, dead: bool = False) -> str:
        return f"{self.settings.name}-{handler}" + ("-dlq" if dead else "")

    def queue_url(self, handler: str, dead: bool = False) -> str:
        name = self.queue_name(handler, dead)
        if name not in self._urls:
            self._urls[name] = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
        return self._urls[name]

    def topic_arn(self) -> str:
        """Built from the caller's account and region, so publishing needs no right to list or create."""
        if self._topic_arn is None:
            import boto3

            account = boto3.session.Session().client(
                "sts", region_name=self.sns.meta.region_name).get_caller_identity()["Account"]
            self._topic_arn = f"arn:aws:sns:{self.sns.meta.region_name}:{account}:{self.settings.name}"
        return self._topic_arn

    # --- publishing ----------------------------------------------------------------------------
    def publish(self, event: Event, handlers: Iterable[str] | None = None) -> None:
        chosen = self.handlers if handlers is None else tuple(h for h in self.handlers if h in set(handlers))
        if not chosen:
            return
        if self.settings.scheme == "sns":
            self.sns.publish(TopicArn=self.topic_arn(), Message=_body(event), MessageAttributes={
                _ATTRIBUTE: {"DataType": "String.Array", "StringValue": json.dumps(list(chosen))}})
        else:
            self._send(event, chosen)

    def _send(self, event: Event, handlers: Iterable[str], *, intent: bool = False, delay: int = 0) -> None:
        for handler in handlers:
            self.sqs.send_message(QueueUrl=self.queue_url(handler), MessageBody=_body(event, intent),
                                  DelaySeconds=min(MAX_DELAY, max(0, delay)))

    def intent(self, events: Sequence[Event]) -> Intent:
        if self.settings.intent_delay <= 0:
            return Intent(self, events)  # publish after the commit; the reconcile pass covers a crash
        return _DelayedIntent(self, events)

    # --- the daemon side -----------------------------------------------------------------------
    def handle(self, handler_name: str, handler: Handler, lambda_event: Mapping[str, Any],
               exists: Callable[[Event], bool] | None = None, *,
               s3_bucket: str | None = None) -> dict[str, list[dict[str, str]]]:
        """Run `handler` on each record of an SQS-triggered Lambda's event; the partial-batch response.

        `exists(event)` says whether an intent's key was written; without it every intent runs.
        `s3_bucket` is the `aws` replica's bucket, whose S3 object events become events (see `decode_all`)."""
        failures = []
        for record in lambda_event.get("Records", ()):
            try:
                self.handle_record(handler_name, handler, record, exists, s3_bucket=s3_bucket)
            except _Waiting:
                failures.append({"itemIdentifier": record["messageId"]})  # kept, hidden for the wait
            except Exception as exc:  # noqa: BLE001 - SQS delivers it again, then dead-letters it
                logger.warning("%s failed for message %s: %s", handler_name, record.get("messageId"), exc,
                               exc_info=logger.isEnabledFor(logging.DEBUG))
                failures.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failures}

    def handle_record(self, handler_name: str, handler: Handler, record: Mapping[str, Any],
                      exists: Callable[[Event], bool] | None = None, *, s3_bucket: str | None = None) -> None:
        """Handle one SQS record; raises if the handler failed (the message must stay in the queue)."""
        decoded = decode_all(record["body"], s3_bucket)
        if len(decoded) == 1:
            self._handle_event(handler_name, handler, record, exists, *decoded[0])
            return
        # Several events in one message (S3 records): each is handled; a deferred one goes on as a message
        # of its own, and the message stays in the queue if any failed (the others are then handled again).
        failed: Exception | None = None
        for event, intent in decoded:
            try:
                self._handle_event(handler_name, handler, None, exists, event, intent)
            except Deferred as wait:
                self._send(event, (handler_name,), intent=intent, delay=int(wait.after))
            except Exception as exc:  # noqa: BLE001 - the others still run; the message fails below
                failed = failed or exc
        if failed is not None:
            raise failed

    def _handle_event(self, handler_name: str, handler: Handler, record: Mapping[str, Any] | None,
                      exists: Callable[[Event], bool] | None, event: Event, intent: bool) -> None:
        """Run the handler on one event; with `record`, a deferral hides (or replaces) that record."""
        if intent and exists is not None and not exists(event):
            logger.debug("Dropping the intent for %s: the write did not happen", event.key)
            return
        if record is None:
            handler(event)
            return
        try:
            handler(event)
        except Deferred as wait:
            if self._defer(handler_name, event, intent, record, wait.after):
                raise _Waiting() from None

    def _defer(self, handler_name: str, event: Event, intent: bool, record: Mapping[str, Any],
               after: float) -> bool:
        """Hide the message for `after` seconds; True if it stays (False: replaced by a fresh copy)."""
        receives = int(record.get("attributes", {}).get("ApproximateReceiveCount", "1"))
        if receives + 1 >= self.settings.max_receives:
            self._send(event, (handler_name,), intent=intent, delay=int(after))
            return False
        url = self._source_queue(handler_name, record)
        self.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=record["receiptHandle"],
                                           VisibilityTimeout=min(MAX_VISIBILITY, max(0, int(after))))
        return True

    def _source_queue(self, handler_name: str, record: Mapping[str, Any]) -> str:
        arn = record.get("eventSourceARN")
        if arn:
            name = arn.rsplit(":", 1)[-1]
            if name not in self._urls:
                self._urls[name] = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
            return self._urls[name]
        return self.queue_url(handler_name)

    def receive(self, handler_name: str, handler: Handler, exists: Callable[[Event], bool] | None = None,
                wait: int = 0, batch: int = 10, *, s3_bucket: str | None = None) -> int:
        """What Lambda's SQS event source does, once: receive a batch from the handler's queue, `handle`
        it, delete the records that did not fail. For `dss-ops` and tests; returns how many were received."""
        url = self.queue_url(handler_name)
        reply = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=batch, WaitTimeSeconds=wait,
                                         AttributeNames=["All"])
        messages = reply.get("Messages", [])
        if not messages:
            return 0
        records = [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                    "attributes": m.get("Attributes", {})} for m in messages]
        failed = {f["itemIdentifier"] for f in self.handle(handler_name, handler, {"Records": records},
                                                           exists, s3_bucket=s3_bucket)["batchItemFailures"]}
        done = [{"Id": str(n), "ReceiptHandle": r["receiptHandle"]} for n, r in enumerate(records)
                if r["messageId"] not in failed]
        if done:
            self.sqs.delete_message_batch(QueueUrl=url, Entries=done)
        return len(records)

    # --- operations ----------------------------------------------------------------------------
    def redrive(self, handler: str | None = None, limit: int = 100) -> int:
        """Move up to `limit` dead letters (of `handler`, or of every handler) back to their queues."""
        moved = 0
        for name in (self.handlers if handler is None else (handler,)):
            dead, source = self.queue_url(name, dead=True), self.queue_url(name)
            while moved < limit:
                reply = self.sqs.receive_message(QueueUrl=dead, MaxNumberOfMessages=min(10, limit - moved),
                                                 VisibilityTimeout=30)
                messages = reply.get("Messages", [])
                if not messages:
                    break
                for message in messages:
                    self.sqs.send_message(QueueUrl=source, MessageBody=message["Body"])
                    self.sqs.delete_message(QueueUrl=dead, ReceiptHandle=message["ReceiptHandle"])
                    moved += 1
        if moved:
            logger.info("Re-drove %d dead-lettered events", moved)
        return moved

    def dead_letters(self, limit: int = 100) -> list[dict]:
        """A look at up to `limit` dead letters per handler (received with visibility 0: left in place)."""
        letters: list[dict] = []
        for name in self.handlers:
            reply = self.sqs.receive_message(QueueUrl=self.queue_url(name, dead=True),
                                             MaxNumberOfMessages=min(10, limit), VisibilityTimeout=0,
                                             AttributeNames=["All"])
            letters += [{"handler": name, "id": m["MessageId"], "body": m["Body"],
                         "attempts": int(m.get("Attributes", {}).get("ApproximateReceiveCount", 0))}
                        for m in reply.get("Messages", [])]
        return letters

    def pending(self) -> int:
        """Messages in the handler queues, visible, in flight or delayed (SQS's approximate counts)."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                 "ApproximateNumberOfMessagesDelayed"]
        total = 0
        for handler in self.handlers:
            attributes = self.sqs.get_queue_attributes(QueueUrl=self.queue_url(handler),
                                                       AttributeNames=names)["Attributes"]
            total += sum(int(attributes.get(name, 0)) for name in names)
        return total

    # SQS delivers to Lambdas: nothing is leased here, and nothing is orphaned.
    def lease(self) -> Message | None:
        return None

    def release_orphans(self) -> int:
        return 0

    def next_due(self) -> float | None:
        return None


class _Waiting(Exception):
    """A deferred record that stays in its queue, hidden for the wait: not a failure."""
