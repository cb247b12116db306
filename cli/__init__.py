"""The ``mcli`` command, the Python SDK behind ``from mcli import ...``, and the local stack."""
