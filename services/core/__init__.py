"""Shared core of the services: the event store client and its errors, consumers, the lease,
settings, structlog setup, health probes, asyncio helpers and the Valkey launcher."""
