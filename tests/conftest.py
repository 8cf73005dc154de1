"""Shared fixtures. Each area keeps its fixtures in a plugin module under tests/infra/."""
import pytest

pytest_plugins = [
    "tests.infra.storage_servers",
    "tests.infra.dss_server",
    "tests.infra.receivers",
    "tests.infra.opensearch",
    "tests.infra.gcs_events",
    "tests.infra.delivery_stores",
    "tests.infra.lambda_runtime",
]

# Variables a developer's shell may carry that would change what the code under test talks to.
_ISOLATED = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "STORAGE_EMULATOR_HOST", "AWS_PROFILE",
             "GOOGLE_APPLICATION_CREDENTIALS", "PUBSUB_EMULATOR_HOST")


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees another's endpoints or a developer's cloud credentials, or any DSS_* setting."""
    import os

    for name in list(os.environ):
        if name.startswith("DSS_") and name not in ("DSS_HCA_BIN", "DSS_TEST_ES_URL"):
            monkeypatch.delenv(name)
    for name in _ISOLATED:
        monkeypatch.delenv(name, raising=False)
