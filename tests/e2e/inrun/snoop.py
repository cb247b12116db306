"""Run inside a rank: look for the node's credentials as a hostile run would, use what it
finds, and print what it got as one line, ``SNOOP {json}``. Standard library only.

It reads every process's environment and command line, walks the stack's state directory
(``STATE_DIR``), the other run's home (``OTHER_HOME``), and tries the Valkey server
(``VALKEY_PORT``) with no password and with every credential it found.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

_SECRET = re.compile(rb"(redis|valkey)s?://[^\s\x00]*|RUNPLANE_[A-Z_]*=[^\x00]*|requirepass\S*")


def _readable(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def processes() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"environs_read": [], "secrets": []}
    me = os.getuid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            owner = proc.stat().st_uid
        except OSError:
            continue
        environ = _readable(proc / "environ")
        if environ is not None and owner != me:
            found["environs_read"].append(proc.name)
        for text in (environ or b"", _readable(proc / "cmdline") or b""):
            found["secrets"] += [
                m.group(0).decode(errors="replace") for m in _SECRET.finditer(text)
            ]
    found["secrets"] = sorted(set(found["secrets"]))
    return found


def files(root: Path | None) -> dict[str, list[str]]:
    """What of ``root`` could be listed or read."""
    listed: list[str] = []
    read: list[str] = []
    if root is None:
        return {"listed": listed, "read": read}
    for top, dirs, names in os.walk(root, onerror=lambda _e: None):
        listed.append(top)
        for name in names:
            path = Path(top, name)
            if _readable(path) is not None:
                read.append(str(path))
        dirs[:] = [d for d in dirs if not Path(top, d).is_symlink()]
    guesses = ("stack.json", "secrets/node-agent", "secrets/operator", "logs/api.log")
    read += [str(root / g) for g in guesses if _readable(root / g) is not None]
    return {"listed": listed, "read": read}


def valkey(port: int, secrets: list[str]) -> list[str]:
    """The server's answer to a write, first with no password, then with each URL found."""
    tries: list[tuple[str, str] | None] = [None]
    for secret in secrets:
        match = re.match(r"\w+://(?:([^:@/]*):([^@/]*)@)?", secret)
        if match and match.group(2):
            tries.append((match.group(1) or "default", match.group(2)))
    answers = []
    for login in tries:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            commands = [] if login is None else [["AUTH", *login]]
            commands.append(["XADD", "snooped", "*", "by", "a-run"])
            payload = b"".join(_command(c) for c in commands)
            conn.sendall(payload)
            answers.append(conn.recv(4096).decode(errors="replace").strip())
    return answers


def _command(words: list[str]) -> bytes:
    out = b"*%d\r\n" % len(words)
    for word in words:
        data = word.encode()
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    return out


def main() -> None:
    state = os.environ.get("STATE_DIR")
    other = os.environ.get("OTHER_HOME")
    found = processes()
    report = {
        "uid": os.getuid(),
        "processes": found,
        "state_dir": files(Path(state) if state else None),
        "other_home": files(Path(other) if other else None),
        "own_token": _readable(Path(os.environ["MOSAICML_ACCESS_TOKEN_FILE"])) is not None,
        "own_runplane": sorted(k for k in os.environ if k.startswith("RUNPLANE_")),
        "valkey": valkey(int(os.environ["VALKEY_PORT"]), found["secrets"]),
    }
    print("SNOOP " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
