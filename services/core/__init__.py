"""Shared core of the services: settings, logging, the event store client, the Valkey launcher."""
