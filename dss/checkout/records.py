"""The checkout table (tables port: SQLite | DynamoDB): bundle checkout jobs and what is in flight.

Items, under hash key `<kind>/<id>` (spread over partitions, as DynamoDB wants) and sort key = replica:

* `job/<job id>` — a bundle checkout job: `{status: RUNNING | SUCCEEDED | FAILED, location, cause, error,
  bundle: {uuid, version}, destination, email, created}`. Written RUNNING when the job is accepted (so
  that the job is known at once), then updated by the workflow's `checkout-write-status` task.
* `bundle/<uuid>.<version>` — the last checkout of that bundle into the replica's own checkout store
  (`{job_id, started, served}`), which GET /bundles?presignedurls|directurls serves from; `served` is
  the one before, served while a refresh runs.
* `file/<blob key>` — the last file checkout started for that blob (`{execution, started}`): while it
  runs, other readers wait for it rather than start another.
"""
from __future__ import annotations

import time
from typing import Any

from dss.identifiers import Replica
from dss.tables import Table

__all__ = ["CheckoutRecords", "TABLE", "PUBLIC_FIELDS"]

TABLE = "checkout"
PUBLIC_FIELDS = {"RUNNING": (), "SUCCEEDED": ("location",), "FAILED": ("cause",)}


class CheckoutRecords:
    def __init__(self, table: Table) -> None:
        self.table = table

    # --- bundle checkout jobs ------------------------------------------------------------------------
    @staticmethod
    def job_keys(replica: Replica, job_id: str) -> dict[str, str]:
        """Where the workflow writes the job's status (`checkout-write-status`, table form)."""
        return {"table": TABLE, "hash_key": f"job/{job_id}", "sort_key": replica.value}

    def create_job(self, replica: Replica, job_id: str, **fields: Any) -> None:
        self.table.put(f"job/{job_id}", replica.value, {"status": "RUNNING", "job_id": job_id, "replica": replica.value,
                                                         "created": time.time(), **fields}, if_absent=True)

    def job(self, replica: Replica, job_id: str) -> dict[str, Any] | None:
        return self.table.get(f"job/{job_id}", replica.value)

    def jobs(self, replica: Replica) -> list[dict[str, Any]]:
        """Every job of the replica, oldest first (a scan: for operators)."""
        found = [item for item in self.table.scan() if item.get("replica") == replica.value and "status" in item]
        return sorted(found, key=lambda item: item.get("created", 0))

    def fail_job(self, replica: Replica, job_id: str, error: str | None, cause: str | None) -> None:
        """Record a failure the workflow could not record itself (it ended without writing one)."""
        job = self.job(replica, job_id) or {"job_id": job_id}
        self.table.put(f"job/{job_id}", replica.value, {**job, "status": "FAILED", "error": error, "cause": cause})

    @staticmethod
    def public(job: dict[str, Any]) -> dict[str, Any]:
        """What GET /bundles/checkout/{id} answers: the status and its `location` or `cause`."""
        status = job.get("status", "RUNNING")
        return {"status": status, **{name: job.get(name) for name in PUBLIC_FIELDS.get(status, ())}}

    # --- what the replica's own checkout store holds or is getting -----------------------------------
    def bundle_checkout(self, replica: Replica, fqid: str) -> dict[str, Any] | None:
        return self.table.get(f"bundle/{fqid}", replica.value)

    def set_bundle_checkout(self, replica: Replica, fqid: str, job_id: str,
                            served: dict[str, Any] | None = None) -> None:
        """`served`: the last checkout known complete (`{job_id, started}`), served while `job_id` runs."""
        self.table.put(f"bundle/{fqid}", replica.value, {"job_id": job_id, "started": time.time(), "served": served})

    def file_checkout(self, replica: Replica, blob_key: str) -> dict[str, Any] | None:
        return self.table.get(f"file/{blob_key}", replica.value)

    def set_file_checkout(self, replica: Replica, blob_key: str, execution: str) -> None:
        self.table.put(f"file/{blob_key}", replica.value, {"execution": execution, "started": time.time()})

    def forget_file_checkout(self, replica: Replica, blob_key: str) -> None:
        self.table.delete(f"file/{blob_key}", replica.value)

    def forget_bundle_checkout(self, replica: Replica, fqid: str) -> None:
        self.table.delete(f"bundle/{fqid}", replica.value)
