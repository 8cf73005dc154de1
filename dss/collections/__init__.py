"""Collections: immutable, versioned, owned lists of references to files, bundles, other collections, and
JSON fragments of them.

Keys: `collections/<uuid>.<version>` (the document `{name, description, details, contents, owner}`) and
`collections/<uuid>.dead` (the tombstone of every version, `{email}`). Every version is written once
(a conditional create: an identical re-PUT is harmless, a different one 409), after every object it names
has been found live in the same replica and at most 1 MiB. Collections are not indexed; the sync handler
copies them to the other replica after what they name, and the owner index (`owner_index`) lists them.

Who may write is decided by the caller (`claim`, run after the request is validated and before anything is
written): the first writer of a uuid owns it, as for files and bundles (`dss.auth.ownership`).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dss.collections.errors import (
    CollectionConflict,
    CollectionDeleted,
    CollectionNotFound,
    CollectionTooLarge,
    InvalidLink,
)
from dss.collections.items import (
    MAX_ITEMS,
    CollectionItem,
    PointerError,
    check_text_fields,
    dedupe,
    parse_items,
    resolve_pointer,
)
from dss.collections.owner_index import OwnerIndex
from dss.events import Event
from dss.events.bus import EventBus
from dss.identifiers import BlobKey, ObjectKey, Replica, new_version, normalise_uuid, validate_version
from dss.jsonlimits import UnsafeJSON, check_json
from dss.storage.blobstore import BlobAlreadyExists, BlobNotFound, BlobStore
from dss.storage.replicas import Replicas

__all__ = ["CollectionService", "Collection", "MAX_LINKED_SIZE"]

logger = logging.getLogger(__name__)

Collection = dict[str, Any]
Claim = Callable[[], str]  # checks the caller may write this uuid; returns the owner's identity
MAX_LINKED_SIZE = 1024 * 1024  # bytes: the largest object (or fragment source) an item may name
_VERIFY_THREADS = 16


def _key(uuid: str, version: str) -> str:
    return str(ObjectKey("collections", uuid, version))


def _tombstone(uuid: str) -> str:
    return str(ObjectKey("collections", uuid, dead=True))


class CollectionService:
    def __init__(self, replicas: Replicas, bus: EventBus, index: OwnerIndex) -> None:
        self.replicas = replicas
        self.bus = bus
        self.index = index
        self._pool = ThreadPoolExecutor(_VERIFY_THREADS, thread_name_prefix="dss-collection-items")

    # --- reads ------------------------------------------------------------------------------
    def get(self, uuid: str, replica: Replica, version: str | None = None) -> Collection:
        """The version asked for, else the latest; CollectionNotFound if absent or deleted."""
        uuid, store = normalise_uuid(uuid), self.replicas[replica]
        versions, dead = _versions(store.list(f"collections/{uuid}."))
        chosen = version if version is not None else max(versions, default=None)
        if dead or chosen not in versions:
            raise CollectionNotFound("Cannot find collection!")
        assert chosen is not None
        return store.get_json(_key(uuid, chosen))

    def list(self, owner: str, start_at: int, per_page: int) -> tuple[list[dict[str, str]], bool]:
        return self.index.page(owner, start_at, per_page)

    # --- writes -----------------------------------------------------------------------------
    def put(self, uuid: str, version: str, replica: Replica, fields: Mapping[str, Any], contents: Any,
            claim: Claim) -> bool:
        """Store a new version; True if created, False if the identical version was there already."""
        uuid, version = normalise_uuid(uuid), validate_version(version)
        checked = check_text_fields(fields, required=True)
        items = dedupe(parse_items(contents, "contents"))
        store = self.replicas[replica]
        if store.exists(_tombstone(uuid)):
            raise CollectionDeleted(f"Collection {uuid} was deleted")
        self._verify(replica, items)
        owner = claim()
        document = {**checked, "contents": [i.as_dict() for i in items], "owner": owner}
        created = self._write(replica, _key(uuid, version), document)
        self.index.add(owner, uuid, version)
        return created

    def patch(self, uuid: str, replica: Replica, version: str, changes: Mapping[str, Any], claim: Claim) -> str:
        """A new version (server time) of `version` with contents removed and added and text replaced."""
        uuid, version = normalise_uuid(uuid), validate_version(version)
        checked = check_text_fields(changes, required=False)
        added = parse_items(changes.get("add_contents"), "add_contents")
        removed = set(parse_items(changes.get("remove_contents"), "remove_contents"))
        base = self.get(uuid, replica, version)
        kept = [item for item in _stored_items(base["contents"]) if item not in removed]
        contents = dedupe(kept + added)
        if len(contents) > MAX_ITEMS:
            raise CollectionTooLarge(f"A collection holds at most {MAX_ITEMS} items; this one would hold "
                                     f"{len(contents)}")
        self._verify(replica, [item for item in added if item not in set(kept)])
        claim()
        new = new_version()
        document = {**base, **checked, "contents": [i.as_dict() for i in contents]}
        self._write(replica, _key(uuid, new), document)
        self.index.add(base["owner"], uuid, new)  # the original forgot this: PATCHed versions went unlisted
        return new

    def delete(self, uuid: str, replica: Replica, claim: Claim, deleted_by: str) -> None:
        """Tombstone every version (`{email}` of who deleted it) and drop them from the owner index."""
        uuid = normalise_uuid(uuid)
        latest = self.get(uuid, replica)
        claim()
        key = _tombstone(uuid)
        with self.bus.intent([Event(replica.value, key)]) as intent:
            try:
                self.replicas[replica].put_json(key, {"email": deleted_by}, if_absent=True)
            except BlobAlreadyExists:
                intent.cancel()
                raise CollectionNotFound("Cannot find collection!") from None
        self.index.remove(latest["owner"], uuid)

    # --- helpers ----------------------------------------------------------------------------
    def _write(self, replica: Replica, key: str, document: Collection) -> bool:
        store = self.replicas[replica]
        # Announced durably before the commit: a crash right after it still replicates the version.
        with self.bus.intent([Event(replica.value, key)]) as intent:
            try:
                store.put_json(key, document, if_absent=True)
                return True
            except BlobAlreadyExists:
                intent.cancel()
                if store.get_json(key) != document:
                    raise CollectionConflict(f"{key} already exists with different content") from None
                return False

    def _verify(self, replica: Replica, items: Sequence[CollectionItem]) -> None:
        """InvalidLink unless every item names a live object of this replica of at most 1 MiB (and its
        fragment, if any, resolves)."""
        store = self.replicas[replica]
        for _ in self._pool.map(lambda item: _verify_item(store, item), items):
            pass


def _stored_items(contents: Iterable[Mapping[str, str]]) -> list[CollectionItem]:
    return [CollectionItem(i["type"], i["uuid"], i["version"], i.get("fragment")) for i in contents]


def _versions(keys: Iterable[str]) -> tuple[set[str], bool]:
    """(versions present, whether the uuid is tombstoned)."""
    versions: set[str] = set()
    dead = False
    for key in keys:
        parsed = ObjectKey.parse(key)
        if parsed is not None and parsed.dead:
            dead = True
        elif parsed is not None and parsed.version:
            versions.add(parsed.version)
    return versions, dead


def _verify_item(store: BlobStore, item: CollectionItem) -> None:
    described = f"{item.type} {item.uuid}.{item.version}"
    try:
        size = store.head(item.key).size
    except BlobNotFound:
        raise InvalidLink(f"The collection refers to a {described} that this replica does not hold") from None
    if size > MAX_LINKED_SIZE:
        raise InvalidLink(f"The collection refers to a {described} larger than {MAX_LINKED_SIZE} bytes")
    if _tombstoned(store, item):
        raise InvalidLink(f"The collection refers to a {described} that was deleted")
    if item.fragment is not None:
        try:
            resolve_pointer(_fragment_source(store, item), item.fragment)
        except PointerError as e:
            raise InvalidLink(f"The fragment of {described} cannot be resolved: {e}") from None


def _tombstoned(store: BlobStore, item: CollectionItem) -> bool:
    if item.kind == "files":
        return False
    keys = [str(ObjectKey(item.kind, item.uuid, dead=True))]
    if item.kind == "bundles":
        keys.append(str(ObjectKey(item.kind, item.uuid, item.version, dead=True)))
    return any(store.exists(key) for key in keys)


def _fragment_source(store: BlobStore, item: CollectionItem) -> Any:
    """The JSON a fragment points into: a file's content, or a bundle manifest or collection itself."""
    if item.kind != "files":
        return store.get_json(item.key)
    metadata = store.get_json(item.key)
    blob = str(BlobKey(metadata["sha256"], metadata["sha1"], metadata["s3-etag"], metadata["crc32c"]))
    described = f"file {item.uuid}.{item.version}"
    if int(metadata["size"]) > MAX_LINKED_SIZE:
        raise InvalidLink(f"A fragment's {described} is larger than {MAX_LINKED_SIZE} bytes")
    try:
        data = store.get(blob)
        check_json(data)
        return json.loads(data)
    except BlobNotFound:
        raise InvalidLink(f"The content of {described} is not in this replica yet") from None
    except (UnsafeJSON, UnicodeDecodeError, ValueError):
        raise InvalidLink(f"A fragment needs JSON content, and {described} is not JSON") from None
