"""Shared fixtures. Each area keeps its fixtures in a plugin module under tests/infra/."""
pytest_plugins = [
    "tests.infra.storage_servers",
]
