"""The API server: runplane's front door (issue 13), MAPI over GraphQL as the real
``mosaicml-cli`` 0.8.3 client speaks it (``reference/mapi.md``).

So far: ``POST /graphql`` with the reads ``getRunsPaginated``, ``getClusters`` and ``getUsers``
(the caller), every request authenticated by its API key; the WebSocket on the same URL
(``websocket``) with the subscriptions ``getRunLogsV2`` and ``watchRunStatus``
(``subscriptions``). Mutations come later.
"""
