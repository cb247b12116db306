"""The projector: keeps every projection current by folding the global log (``projections``)."""
