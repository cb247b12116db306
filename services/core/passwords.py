"""The log's server's passwords on disk: one file per ACL user, and the server's ACL file.

``python -m services.core.passwords DIR`` writes them for a deployment (compose.yaml reads
them as secrets: docs/deploying.md), and the keyring that seals users' secrets
(``services.core.sealing``) beside them; ``mcli dev up`` writes them in the local stack's state
directory (``secrets/``).

Invariants:
- A password is drawn by ``secrets.token_urlsafe`` (256 bits) and lives in one file,
  ``<user>.password``, created with mode 0600 (a temp file opened with that mode, then renamed
  over the old one): never readable by another user, not even for an instant. A file that
  holds a password already is kept: writing again reuses every password.
- The ACL file (``users.acl``, ``services.core.acl``) holds only the passwords' SHA-256, so
  it may be readable by the server's own user (mode 0644 with ``--acl-readable``).
- A cluster's replicas log in to their primary as the replication user with a config file of
  its password (``replication.conf``: ``masteruser``, ``masterauth``), written only for a
  cluster (``--cluster``, ``services.core.valkey_cluster``), mode 0600 like a password file.
- Nothing here prints or logs a password. Standard library only (with ``services.core.acl``):
  the local stack's supervisor and the Valkey launcher read passwords too, and stay small.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
from pathlib import Path

from services.core import acl
from services.core.private import write_private

ACL_FILE = "users.acl"
REPLICATION_CONF = "replication.conf"
_SUFFIX = ".password"


class PasswordFileError(RuntimeError):
    """A password file cannot be read: the message names it and says why."""


def redacted(url: str) -> str:
    """``url`` without the login it may carry: fit to print or log."""
    return re.sub(r"//[^@/]*@", "//***@", url)


def password_file(directory: Path, user: str) -> Path:
    return directory / f"{user}{_SUFFIX}"


def acl_path(directory: Path) -> Path:
    return directory / ACL_FILE


def read_password(path: Path) -> str:
    """The first line of ``path``, without its line end."""
    try:
        with path.open() as file:
            password = file.readline().rstrip("\r\n")
    except OSError as exc:
        raise PasswordFileError(
            f"cannot read the password file {path}: {exc.strerror or exc}"
        ) from None
    if not password:
        raise PasswordFileError(f"the password file {path} is empty")
    return password


def write_replication_conf(path: Path, user: str, password_file: Path) -> None:
    """The replicas' login to their primary (``user``, whose password is in
    ``password_file``), as a Valkey config file given as the server's first argument."""
    write_private(path, f"masteruser {user}\nmasterauth {read_password(password_file)}")


def provision(directory: Path, *, acl_mode: int = 0o600, owner: int | None = None) -> Path:
    """A password file for every ACL user in ``directory`` (kept if it holds one, drawn if
    not) and the ACL file of their hashes; the ACL file's path. ``owner``: a uid to give each
    service's password file to (the operator's stays the caller's)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    hashes = {}
    for user in acl.USERS:
        path = password_file(directory, user)
        try:
            password = read_password(path)
        except PasswordFileError:
            password = secrets.token_urlsafe(32)
            write_private(path, password)
        if owner is not None and user != acl.OPERATOR:
            os.chown(path, owner, -1)
        hashes[user] = acl.password_hash(password)
    path = acl_path(directory)
    write_private(path, acl.acl_file(hashes).rstrip("\n"), mode=acl_mode)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.core.passwords",
        description="Write a password file (0600) for each of the log's server's users, the "
        f"server's ACL file ({ACL_FILE}, hashes only) and the keyring that seals users' secrets "
        "(keyring.json, 0600) in DIR; passwords and a keyring already there are kept.",
    )
    parser.add_argument("directory", type=Path, metavar="DIR")
    parser.add_argument(
        "--owner",
        type=int,
        metavar="UID",
        help="give each service's password file and the keyring to this uid (the image's "
        "runplane user is 10001); needs root",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help=f"also write {REPLICATION_CONF} (0600): the replication user's login, which each "
        "replica of a Valkey Cluster gives its primary (compose.yaml's cluster profile)",
    )
    parser.add_argument(
        "--acl-readable",
        action="store_true",
        help=f"make {ACL_FILE} readable by all (0644), for a server that runs as another user",
    )
    args = parser.parse_args(argv)
    # Here, not at the top: the supervisor and the launcher import this module and need no
    # cryptography.
    from services.core import sealing  # noqa: PLC0415

    try:
        written = provision(
            args.directory, acl_mode=0o644 if args.acl_readable else 0o600, owner=args.owner
        )
        keyring = sealing.provision(args.directory, owner=args.owner)
        if args.cluster:
            user = acl.REPLICATION
            conf = args.directory / REPLICATION_CONF
            write_replication_conf(conf, user, password_file(args.directory, user))
    except (OSError, sealing.KeyringError) as exc:
        print(f"✗ {exc}", file=sys.stderr)  # noqa: T201
        return 1
    users = ", ".join(acl.USERS)
    print(f"{written}, a password file for each of {users}, and {keyring}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
