"""The two replicas of the store, each a BlobStore chosen from configuration by URL."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from dss.identifiers import Replica
from dss.storage.blobstore import BlobStore, BlobStoreFactory

__all__ = ["Replicas", "ImmutableCache"]


class Replicas:
    def __init__(self, factory: BlobStoreFactory, urls: Mapping[str, str]) -> None:
        self.factory = factory
        self._stores = {Replica(name): factory.for_url(url, name=name) for name, url in urls.items()}

    def __getitem__(self, replica: Replica | str) -> BlobStore:
        return self._stores[Replica(replica)]

    def __iter__(self) -> Iterator[Replica]:
        return iter(self._stores)

    def by_name(self, name: str) -> BlobStore | None:
        try:
            return self._stores[Replica(name)]
        except ValueError:
            return None


class ImmutableCache:
    """A small LRU for parsed write-once objects (bundle manifests): safe because they never change."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_load(self, key: Any, load: Callable[[], Any]) -> Any:
        """The cached value, or `load()`'s result, which is cached unless it is None (not there yet)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = load()
        if value is not None:
            self.put(key, value)
        return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
