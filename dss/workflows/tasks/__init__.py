"""The DSS task functions, by domain. Importing this package registers them all in
`dss.workflows.registry.REGISTRY` (use `default_registry()`).

* `copy`: blob copy in parallel parts over the BlobStore port (setup, parts, finalize, abort).
* `checkout`: file and bundle checkout (freshness check, validation, plan, batch copy, status).
* `metadata`: write a file's metadata document once its blob is in place.
* `failures`: record a workflow's failure where the API can find it.
"""
from dss.workflows.tasks import checkout, copy, failures, metadata

__all__ = ["checkout", "copy", "failures", "metadata"]
