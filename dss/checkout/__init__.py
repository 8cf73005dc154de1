"""Checkout: copies of files and bundles in a checkout store per replica, from which reads are served.

* `keys`: where checked-out objects live (a file under its blob key, a bundle under
  `bundles/<uuid>.<version>/<name>`).
* `freshness`: how long a copy is served (`DSS_BLOB_TTL_DAYS`) and when it is copied again
  (`DSS_BLOB_PUBLIC_TTL_DAYS`); which small JSON files stay checked out.
* `stores`: the checkout store of each replica and the destinations a bundle checkout may name.
* `records`: the checkout table (tables port): bundle checkout jobs and checkouts in flight.
* `service`: the read flows (ready → 302, pending → 301 with a token) and the jobs; the copies
  themselves are the `file-checkout` and `bundle-checkout` workflows (`dss.workflows`).
* `expiry`: the embedded default's sweep of expired copies.
"""
from dss.checkout.expiry import sweep
from dss.checkout.freshness import Freshness, State, cacheable
from dss.checkout.records import CheckoutRecords
from dss.checkout.service import CheckoutService, Pending, Ready
from dss.checkout.stores import CheckoutStores

__all__ = ["CheckoutService", "CheckoutStores", "CheckoutRecords", "Freshness", "State", "Ready", "Pending",
           "cacheable", "sweep"]
