"""Credentials drawn at the edge: an id (public: listings, audit, the log) and a secret (256
bits, ``secrets.token_urlsafe(32)``), for API keys (``events.identity``) and run tokens
(``events.tokens``), whose pure rules check what is drawn here."""

from __future__ import annotations

import secrets

from events.identity import KEY_ID_ALPHABET, KEY_ID_LENGTH


def draw_credential() -> tuple[str, str]:
    """A fresh id and secret."""
    credential_id = "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))
    return credential_id, secrets.token_urlsafe(32)
