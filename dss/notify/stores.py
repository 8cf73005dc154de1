"""Choosing the delivery store from configuration.

The delivery queue lives beside the deployment's tables: with ``DSS_TABLES_URL=dynamodb://[region]`` in the
DynamoDB table ``dss-<stage>-deliveries`` (:mod:`dss.notify.dynamodb`), otherwise in the SQLite file
``<DSS_DATA_DIR>/deliveries.sqlite3`` (:mod:`dss.notify.store`, the embedded default).
"""
from __future__ import annotations

from typing import Any

from dss.config import Config
from dss.notify.queue import DeliveryQueue

__all__ = ["open_delivery_store"]


def open_delivery_store(config: Config, **options: Any) -> DeliveryQueue:
    """The delivery store ``config`` names; ``options`` go to the store (e.g. ``client=``, ``transport=``)."""
    if config.tables_url.partition("://")[0].lower() == "dynamodb":
        from dss.notify.dynamodb import DynamoDBDeliveryStore
        return DynamoDBDeliveryStore.from_config(config, **options)
    from dss.notify.store import DeliveryStore
    return DeliveryStore.from_config(config, config.data_dir / "deliveries.sqlite3", **options)
