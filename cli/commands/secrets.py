"""``mcli create secret TYPE ...``, ``mcli get secrets`` and ``mcli delete secret NAME...``,
with mcli's flags and habits (``docs/mcli-secrets.md``).

A value comes from a flag (``env KEY=VALUE``, ``docker --password``, ``hf --token``), a file
(``mounted PATH``, ``ssh PATH``, ``s3 --credentials-file``, ``gcp --credentials-file``) or a
prompt when neither is given: hidden on a terminal, a line of stdin otherwise (so
``printf %s "$TOKEN" | mcli create secret hf`` works); ``--no-input`` makes a missing one an
error. A value is never printed, echoed or logged. Without ``--name``, a secret is named as mcli
names it: after the variable or the file, made a DNS name, plus ``-`` and 4 random hex
characters (``hf``: ``hugging-face``); a mount path defaults to ``/secrets/<name>``.
"""

from __future__ import annotations

import argparse
import configparser
import getpass
import json
import re
import secrets as random
import sys
from pathlib import Path
from typing import Any

from cli import secrets as remote
from cli.api import Api
from cli.commands.common import confirm, echo, success, with_api
from cli.errors import ClientError, NotFound, UsageError
from cli.render import make_console, plain_table, when
from events import secrets
from events.model import SecretType
from events.secrets import Secret

#: ``mcli create secret`` kinds: (command, aliases, type).
KINDS: list[tuple[str, tuple[str, ...], SecretType]] = [
    ("env", ("environment",), "env"),
    ("mounted", (), "mounted"),
    ("docker", ("docker-registry",), "docker"),
    ("ssh", (), "ssh"),
    ("git-ssh", ("git",), "git"),
    ("s3", (), "s3"),
    ("gcp", (), "gcp"),
    ("hf", ("hugging_face",), "hf"),
]
#: ``get secrets --type`` takes mcli's names (and runplane's).
TYPE_NAMES: dict[str, SecretType] = {
    **{shown: kind for kind, shown in remote.SHOWN.items()},
    **{kind: kind for kind in secrets.SECRET_TYPES},
}
_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_KEY_VALUE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)=(.*)", re.DOTALL)
_MOUNT_PARENT = "/secrets"
_HF_NAME = "hugging-face"


# --- asking ------------------------------------------------------------------------------------


class Asker:
    """Prompts for what a flag did not give: hidden for a value, never echoed."""

    def __init__(self, *, allowed: bool) -> None:
        self.allowed = allowed

    def ask(self, question: str, flag: str, *, hidden: bool = False) -> str:
        if not self.allowed:
            raise UsageError(f"{flag} is required with --no-input ({question})")
        if sys.stdin.isatty():
            answer = getpass.getpass(f"? {question} ") if hidden else input(f"? {question} ")
        else:
            line = sys.stdin.readline()
            if not line:
                raise UsageError(f"{flag} is required: give it, or a line on stdin ({question})")
            answer = line.removesuffix("\n").removesuffix("\r")
        if not answer and not hidden:
            raise UsageError(f"{flag}: an answer is required ({question})")
        return answer


def dns_name(text: str) -> str:
    """``text`` as a secret's name, as mcli makes one (``ensure_rfc1123_compatibility``)."""
    name = re.sub(r"[^a-z0-9-]", "-", text.lower())[:63]
    if name and not name[0].isalnum():
        name = "1" + name[:-1]
    if name and not name[-1].isalnum():
        name = name[:-1] + "1"
    return name or "secret"


def unique_name(base: str) -> str:
    """mcli's name for a secret given none: ``base`` made a DNS name, plus 4 random hex."""
    return f"{dns_name(base)[:58]}-{random.token_hex(2)}"


def read_file(path: str, flag: str) -> str:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ClientError(f"{flag}: {path} does not exist or is not a file")
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"{flag}: cannot read {path} as text ({exc})") from None


def _absolute(path: str | None, flag: str) -> str | None:
    if path is not None and not path.startswith("/"):
        raise UsageError(f"{flag}: a mount path is absolute, not {path}")
    return path


# --- building a secret from the arguments -------------------------------------------------------


def secret_of(args: argparse.Namespace, ask: Asker) -> Secret:
    kind: SecretType = args.secret_type
    name: str | None = args.secret_name
    match kind:
        case "env":
            return _env(args, ask, name)
        case "hf":
            token = args.token or ask.ask(
                "What is your Hugging Face token?", "--token", hidden=True
            )
            return Secret(
                name=name or _HF_NAME,
                secret_type="hf",
                metadata={"key": secrets.HF_KEY},
                value={"value": token},
            )
        case "mounted" | "ssh" | "git":
            return _file(args, ask, kind, name)
        case "gcp":
            _absolute(args.mount_path, "--mount-path")
            path = args.credentials_file or ask.ask(
                "Where is your GCP credentials file?", "--credentials-file"
            )
            text = read_file(path, "--credentials-file")
            name = name or ask.ask("What would you like to name this secret?", "--name")
            mount = _absolute(args.mount_path, "--mount-path") or f"{_MOUNT_PARENT}/{name}"
            return Secret(
                name=name, secret_type="gcp", metadata={"mountPath": mount}, value={"value": text}
            )
        case "s3":
            return _s3(args, ask, name)
        case "docker":
            return _docker(args, ask, name)
    raise AssertionError(kind)  # pragma: no cover


def _env(args: argparse.Namespace, ask: Asker, name: str | None) -> Secret:
    """``KEY=VALUE`` as mcli takes it; ``KEY`` alone (runplane's own) prompts for the value,
    so it is in no command line; neither, prompts for both."""
    given = args.env_pair
    if given is not None and "=" not in given and _KEY.fullmatch(given):
        key = given
        value = ask.ask("What value would you like to store?", "VALUE", hidden=True)
    elif given is not None:
        matched = _KEY_VALUE.fullmatch(given)
        if matched is None:
            raise UsageError(
                "KEY=VALUE: an environment variable is given as KEY=VALUE (or KEY alone, the "
                "value then asked for), KEY of [0-9A-Za-z_] not starting with a digit"
            )
        key, value = matched.groups()
    else:
        key = ask.ask("If an environment variable is KEY=VALUE, what should be the KEY?", "KEY")
        value = ask.ask("What value would you like to store?", "VALUE", hidden=True)
    return Secret(
        name=name or unique_name(key),
        secret_type="env",
        metadata={"key": key},
        value={"value": value},
    )


def _file(args: argparse.Namespace, ask: Asker, kind: SecretType, name: str | None) -> Secret:
    question = (
        "Which file would you like to store as a secret?"
        if kind == "mounted"
        else "Where is your private SSH key located?"
    )
    given_mount = _absolute(args.mount_path, "--mount-path")
    path = args.path or ask.ask(question, "PATH")
    text = read_file(path, "PATH")
    name = name or unique_name(Path(path).stem)
    mount = given_mount or f"{_MOUNT_PARENT}/{name}"
    return Secret(name=name, secret_type=kind, metadata={"mountPath": mount}, value={"value": text})


def _s3(args: argparse.Namespace, ask: Asker, name: str | None) -> Secret:
    _absolute(args.mount_directory, "--mount-directory")
    name = name or ask.ask("What would you like to name this secret?", "--name")
    config_path = args.config_file or ask.ask("Where is your S3 config file?", "--config-file")
    credentials_path = args.credentials_file or ask.ask(
        "Where is your S3 credentials file?", "--credentials-file"
    )
    config = read_file(config_path, "--config-file")
    credentials = read_file(credentials_path, "--credentials-file")
    parser = configparser.ConfigParser()
    try:
        parser.read_string(credentials)
    except configparser.Error as exc:
        raise ClientError(f"--credentials-file: not an AWS credentials file ({exc})") from None
    profiles = parser.sections()
    if not profiles:
        raise ClientError("--credentials-file: no profiles found in the credentials file")
    profile = args.profile
    if profile is not None and profile not in profiles:
        raise ClientError(
            f"--profile: {profile} is not a profile of the credentials file: " + ", ".join(profiles)
        )
    if profile is None:
        if len(profiles) == 1:
            profile = profiles[0]
        elif "default" in profiles:
            profile = "default"
        else:
            profile = ask.ask(f"Which profile ({', '.join(profiles)})?", "--profile")
    mount = _absolute(args.mount_directory, "--mount-directory") or f"{_MOUNT_PARENT}/{name}"
    return Secret(
        name=name,
        secret_type="s3",
        metadata={"mountDirectory": mount},
        value={"credentials": credentials, "config": config, "profile": profile},
    )


def _docker(args: argparse.Namespace, ask: Asker, name: str | None) -> Secret:
    name = name or ask.ask("What would you like to name this secret?", "--name")
    server = args.server or ask.ask(
        "What is the URL of the registry (Docker Hub: https://index.docker.io/v1/)?", "--server"
    )
    username = args.username or ask.ask("What is your username?", "--username")
    password = args.password or ask.ask(
        "What is your password/API token?", "--password", hidden=True
    )
    value = {"server": server, "username": username, "password": password}
    if args.email:
        value["email"] = args.email
    return Secret(name=name, secret_type="docker", metadata={}, value=value)


# --- the commands ------------------------------------------------------------------------------


async def create_secret(args: argparse.Namespace, api: Api) -> int:
    secret = secret_of(args, Asker(allowed=not args.no_input))
    created = await remote.create(api, secret)
    success(f"Created {created.shown_type} secret: {created.name}")
    return 0


async def get_secrets(args: argparse.Namespace, api: Api) -> int:
    types = None if args.secret_type == "all" else [TYPE_NAMES[args.secret_type]]
    found = await remote.listing(api, types=types, owner=args.user)
    if args.output == "json":
        echo(json.dumps([s.to_dict() | ({} if args.ids else {"id": None}) for s in found]))
        return 0
    if args.output == "name":
        for item in found:
            echo(item.name)
        return 0
    if not found:
        echo("No secrets found.")
        return 0
    headers = ["NAME", *(["ID"] if args.ids else []), "TYPE", "CREATED_AT"]
    table = plain_table(*headers)
    for item in found:
        shown = item.shown_type + ("" if item.stored else " (no value: create it again)")
        table.add_row(item.name, *([item.id] if args.ids else []), shown, when(item.created_at))
    make_console().print(table)
    return 0


async def delete_secrets(args: argparse.Namespace, api: Api) -> int:
    if not args.names and not args.all:
        raise UsageError("name the secrets to delete (names or globs), or use --all")
    found = await remote.listing(api, None if args.all else list(args.names), owner=args.user)
    if not found:
        matching = ", ".join(args.names)
        raise NotFound(f"Could not find secrets matching: {matching}" if args.names else
                       "Could not find any secrets")  # fmt: skip
    names = [item.name for item in found]
    if not args.force and not confirm(f"Delete secret(s) {', '.join(names)}?"):
        echo("Nothing deleted.")
        return 1
    deleted = await remote.delete(api, names, owner=args.user)
    success(f"Deleted secret(s): {', '.join(item.name for item in deleted)}")
    return 0


# --- the parsers -------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """``mcli create secret ...``."""
    create = subparsers.add_parser("create", help="create objects (secrets)")
    objects = create.add_subparsers(dest="object", metavar="{secret}", required=True)
    secret = objects.add_parser(
        "secret",
        help="store a secret that your runs get (env, mounted, docker, ssh, git-ssh, s3, gcp, hf)",
    )
    kinds = secret.add_subparsers(dest="kind", metavar="SECRET_TYPE", required=True)
    for command, aliases, kind in KINDS:
        parser = kinds.add_parser(command, aliases=list(aliases), help=_HELP[kind])
        parser.add_argument(
            "--name", dest="secret_name", metavar="NAME", help="the secret's name (unique)"
        )
        parser.add_argument("--no-input", action="store_true", help="do not prompt")
        _arguments(parser, kind)
        parser.set_defaults(handler=with_api(create_secret), secret_type=kind)


_HELP: dict[SecretType, str] = {
    "env": "a secret the runs get as an environment variable (KEY=VALUE)",
    "mounted": "a text file the runs get at <mount-path>/secret",
    "docker": "credentials to pull images from a private registry",
    "ssh": "an SSH private key the runs get as a file",
    "git": "an SSH private key for git_repo's clone (GIT_SSH_COMMAND)",
    "s3": "AWS config and credentials files (AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE)",
    "gcp": "a GCP credentials file (GOOGLE_APPLICATION_CREDENTIALS)",
    "hf": "a Hugging Face token (HF_TOKEN)",
}


def _arguments(parser: argparse.ArgumentParser, kind: SecretType) -> None:
    mount = "where the file is in a run (default /secrets/<name>; the file is <it>/secret)"
    if kind == "env":
        parser.add_argument(
            "env_pair",
            nargs="?",
            metavar="KEY=VALUE",
            help="the variable (KEY alone: the value is asked for, hidden, or read from stdin)",
        )
    elif kind in ("mounted", "ssh", "git"):
        what = "the file" if kind == "mounted" else "the private key"
        parser.add_argument("path", nargs="?", metavar="PATH", help=f"{what} to store")
        parser.add_argument("--mount-path", metavar="PATH", help=mount)
    elif kind == "docker":
        parser.add_argument("--username", help="your username for the registry")
        parser.add_argument("--password", help="your password or API token (better: a prompt)")
        parser.add_argument("--email", help="the email you use for the registry")
        parser.add_argument(
            "--server", help="the registry's URL (Docker Hub: https://index.docker.io/v1/)"
        )
    elif kind == "s3":
        parser.add_argument("--config-file", metavar="PATH", help="usually ~/.aws/config")
        parser.add_argument("--credentials-file", metavar="PATH", help="usually ~/.aws/credentials")
        parser.add_argument(
            "--mount-directory", metavar="PATH", help="where both are in a run (/secrets/<name>)"
        )
        parser.add_argument("--profile", help="the profile of the credentials to use")
    elif kind == "gcp":
        parser.add_argument("--credentials-file", metavar="PATH", help="the credentials file")
        parser.add_argument("--mount-path", metavar="PATH", help=mount)
    elif kind == "hf":
        parser.add_argument("--token", help="your Hugging Face token (better: a prompt)")


def add_get(kinds: Any) -> None:
    """``mcli get secrets``, beside ``get runs``."""
    for alias in ("secrets", "secret"):
        parser = kinds.add_parser(
            alias,
            help="list your secrets: names and types" if alias == "secrets" else argparse.SUPPRESS,
        )
        parser.add_argument(
            "--type",
            dest="secret_type",
            choices=["all", *TYPE_NAMES],
            default="all",
            help="only secrets of this type",
        )
        parser.add_argument("--ids", action="store_true", help="show the secrets' ids")
        parser.add_argument("-u", "--user", help="another user's (admins)")
        parser.add_argument(
            "-o", "--output", choices=("table", "name", "json"), default="table", help="format"
        )
        parser.set_defaults(handler=with_api(get_secrets))


def add_delete(kinds: Any) -> None:
    """``mcli delete secret NAME...``, beside ``delete run``."""
    for alias in ("secret", "secrets"):
        shown = "delete secrets by name or glob"
        parser = kinds.add_parser(alias, help=shown if alias == "secret" else argparse.SUPPRESS)
        parser.add_argument("names", nargs="*", metavar="SECRET", help="names or globs (db-*)")
        parser.add_argument("-a", "--all", action="store_true", help="every secret of yours")
        parser.add_argument("-y", "--force", action="store_true", help="do not ask")
        parser.add_argument("-u", "--user", help="another user's (admins)")
        parser.set_defaults(handler=with_api(delete_secrets))
