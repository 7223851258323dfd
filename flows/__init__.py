"""Prefect flows. Importing this package sets process-wide defaults before Prefect loads."""

import os

# A busy 2-core machine can take longer than Prefect's default to start its ephemeral API server.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
