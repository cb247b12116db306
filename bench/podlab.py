"""A private podman and a private registry on loopback, for the container benches and tests.

Nothing global: podman's storage, run state and settings are under one directory (its own
``containers.conf``, ``storage.conf`` and ``registries.conf``, named by ``CONTAINERS_CONF``,
``CONTAINERS_STORAGE_CONF`` and ``CONTAINERS_REGISTRIES_CONF`` in ``env``), and Debian's
``docker-registry`` serves images from a directory of its own, over plain HTTP on a free
loopback port that the registries.conf marks insecure. So a pull is a real pull, over the
network, from a registry that knows nothing of the node's cache.

Images are made here, without any other registry:
- ``busybox``: a static busybox with a link per applet and a marker file only the image has
  (``/etc/runplane-marker``);
- ``python``: a Debian bookworm rootfs with python3, python3-venv and git, made by
  ``mmdebstrap`` once and kept as a tarball under ``.cache/images/``, named by its recipe's
  hash (about 35 s and 200 MB the first time, from the Debian mirror);
- ``filler``: busybox plus a layer of random bytes, for the pull bench.

``problem()`` says why containers cannot run here (checked once, by running one), or None.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "images"
MARKER = "/etc/runplane-marker"
MARKER_TEXT = "only the image has this file"
BUSYBOX = Path("/bin/busybox")
PYTHON_RECIPE = (
    "mmdebstrap --variant=minbase --include=python3,python3-venv,git,ca-certificates "
    "--aptopt=APT::Install-Recommends=false "
    "--dpkgopt=path-exclude=/usr/share/man/* --dpkgopt=path-exclude=/usr/share/doc/* "
    "--dpkgopt=path-exclude=/usr/share/locale/* bookworm"
)

CONTAINERS_CONF = """\
[containers]
# The default nofile limit can exceed the hard limit a CI machine grants.
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{run}/libpod"
"""
STORAGE_CONF = """\
[storage]
driver = "overlay"
graphroot = "{root}"
runroot = "{run}/storage"
"""
REGISTRIES_CONF = """\
unqualified-search-registries = []
[[registry]]
location = "{registry}"
insecure = true
"""
REGISTRY_CONFIG = """\
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
http:
  addr: {registry}
"""


#: A line of the registry's access log: ``"GET /v2/x/manifests/1 HTTP/1.1" 200 348``.
_ACCESS = re.compile(r'"(?P<request>[A-Z]+ \S+) HTTP/[\d.]+" \d{3} (?P<bytes>\d+)')


class LabError(RuntimeError):
    """The lab could not be set up; the message says why (a test skips with it)."""


class Podlab:
    """Podman and a registry under ``base``; ``close`` removes every container and stops the
    registry (the directory is the caller's)."""

    def __init__(
        self, base: Path, *, registry: bool = True, login: tuple[str, str] | None = None
    ) -> None:
        """``login``: the registry asks for this user and password (htpasswd), and answers
        nobody else."""
        self.base = base
        self.registry = ""
        self.login = login
        self._registry_proc: subprocess.Popen[bytes] | None = None
        # Short: podman refuses a runroot of more than 50 characters (its container monitor's
        # cleanup fails then, and every exit waits 20 s for it), and pytest's paths are long.
        run = self.run = Path(tempfile.mkdtemp(prefix="podlab-", dir="/tmp"))
        self.conf = base / "containers.conf"
        self.conf.write_text(CONTAINERS_CONF.format(run=run))
        storage = base / "storage.conf"
        storage.write_text(STORAGE_CONF.format(root=base / "root", run=run))
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(self.conf),
            "CONTAINERS_STORAGE_CONF": str(storage),
        }
        if registry:
            self._start_registry()

    # --- podman -------------------------------------------------------------------------

    def podman(self, *args: str, timeout: float = 300, stdin: bytes | None = None) -> str:
        """Run podman with the lab's settings; its stdout, or ``LabError`` with its stderr."""
        try:
            done = subprocess.run(
                ["podman", *args], env=self.env, input=stdin, capture_output=True,
                timeout=timeout, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LabError(f"podman {args[0]}: {exc}") from exc
        if done.returncode != 0:
            raise LabError(f"podman {' '.join(args[:2])}: {done.stderr.decode().strip()}")
        return done.stdout.decode()

    def problem(self) -> str | None:
        """Why containers cannot run here, or None: podman is tried for real."""
        if shutil.which("podman") is None:
            return "podman is not installed (apt-get install podman runc)"
        if not BUSYBOX.exists():
            return f"no static busybox at {BUSYBOX} (apt-get install busybox-static)"
        try:
            self.podman("import", "--quiet", "-", "localhost/runplane-probe:1", stdin=busybox_tar())
            said = self.podman("run", "--rm", "localhost/runplane-probe:1", "echo", "ok")
        except LabError as exc:
            return f"podman cannot run a container here: {exc}"
        return None if said.strip() == "ok" else f"podman ran a container that said {said!r}"

    def push(self, tar: bytes | Path, name: str) -> str:
        """Import a rootfs tarball as ``name`` (``repo:tag``), push it to the lab's registry;
        the reference to pull it by. The local copy is removed: the first pull is real."""
        local = f"localhost/{name}"
        if isinstance(tar, Path):
            self.podman("import", "--quiet", str(tar), local)
        else:
            self.podman("import", "--quiet", "-", local, stdin=tar)
        remote = f"{self.registry}/{name}"
        creds = ["--creds", ":".join(self.login)] if self.login else []
        self.podman("push", "--quiet", *creds, local, remote)
        self.podman("rmi", "--force", local)
        return remote

    def served(self) -> list[tuple[str, int]]:
        """Every request the registry answered so far: (method and path, bytes sent)."""
        found = []
        for line in (self.base / "registry.log").read_text(errors="replace").splitlines():
            match = _ACCESS.search(line)
            if match:
                found.append((match["request"], int(match["bytes"])))
        return found

    def forget(self, reference: str) -> None:
        """Remove an image from the node's cache (the next pull fetches every layer)."""
        self.podman("rmi", "--force", "--ignore", reference)

    def close(self) -> None:
        with contextlib.suppress(LabError):
            self.podman("rm", "--all", "--force", "--time", "0", timeout=120)
        shutil.rmtree(self.run, ignore_errors=True)
        if self._registry_proc is not None:
            self._registry_proc.terminate()
            try:
                self._registry_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._registry_proc.kill()
                self._registry_proc.wait()

    # --- the registry ------------------------------------------------------------------------

    def _start_registry(self) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise LabError("docker-registry is not installed (apt-get install docker-registry)")
        self.registry = f"127.0.0.1:{free_port()}"
        config = self.base / "registry.yml"
        text = REGISTRY_CONFIG.format(data=self.base / "registry", registry=self.registry)
        if self.login is not None:
            text += self._htpasswd(*self.login)
        config.write_text(text)
        registries = self.base / "registries.conf"
        registries.write_text(REGISTRIES_CONF.format(registry=self.registry))
        self.env["CONTAINERS_REGISTRIES_CONF"] = str(registries)
        with (self.base / "registry.log").open("ab") as log:
            self._registry_proc = subprocess.Popen(
                [binary, "serve", str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        try:
            self._until_registry_answers()
        except LabError:
            self.close()
            raise

    def _until_registry_answers(self) -> None:
        assert self._registry_proc is not None
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.registry}/v2/", timeout=1):
                    return
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code == 401:  # it answers: with a login only
                    return
                raise LabError(f"docker-registry answered {exc.code} on {self.registry}") from None
            except OSError as exc:
                if self._registry_proc.poll() is not None or time.monotonic() > deadline:
                    why = f"docker-registry did not answer on {self.registry}: {exc}"
                    raise LabError(why) from None
            time.sleep(0.05)  # allowed: polling inside a deadline loop

    def _htpasswd(self, user: str, password: str) -> str:
        """The registry's auth section, with its htpasswd file (bcrypt, as it requires)."""
        if shutil.which("htpasswd") is None:
            raise LabError("htpasswd is not installed (apt-get install apache2-utils)")
        done = subprocess.run(
            ["htpasswd", "-Bbn", user, password], capture_output=True, check=True, text=True
        )
        users = self.base / "htpasswd"
        users.write_text(done.stdout)
        return f"auth:\n  htpasswd:\n    realm: podlab\n    path: {users}\n"

    def auths(self) -> bytes:
        """A docker config.json with the registry's login (what a docker secret holds)."""
        assert self.login is not None
        token = base64.b64encode(":".join(self.login).encode()).decode()
        return json.dumps({"auths": {self.registry: {"auth": token}}}).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- images -----------------------------------------------------------------------------------


def busybox_tar(extra: dict[str, bytes] | None = None) -> bytes:
    """A rootfs: static busybox, a link per applet in /bin, /tmp, the marker, and ``extra``
    files (path -> content)."""
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, check=True, text=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "tmp", "etc", "root"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        files = {MARKER.lstrip("/"): MARKER_TEXT.encode() + b"\n"}
        for path, data in {**files, **(extra or {})}.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def filler_tar(megabytes: int) -> bytes:
    """busybox and ``megabytes`` of random bytes (which no compression shrinks)."""
    return busybox_tar({"filler.bin": os.urandom(megabytes * 1_000_000)})


def python_tar() -> Path:
    """The Python image's rootfs tarball, made once per recipe (``LabError`` if it cannot)."""
    recipe = hashlib.sha256(PYTHON_RECIPE.encode()).hexdigest()[:16]
    cached = CACHE / f"python-{recipe}.tar"
    if cached.exists():
        return cached
    if shutil.which("mmdebstrap") is None:
        raise LabError(
            "no cached Python image and no mmdebstrap to make one (apt-get install mmdebstrap)"
        )
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        out = Path(scratch) / "rootfs.tar"
        done = subprocess.run(
            [*PYTHON_RECIPE.split(), str(out)], capture_output=True, timeout=900, check=False
        )
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise LabError(f"mmdebstrap failed: {' / '.join(tail)}")
        out.replace(cached)
    return cached


def inspect_image(lab: Podlab, reference: str) -> dict[str, object]:
    found = json.loads(lab.podman("image", "inspect", reference))
    return dict(found[0])
