"""Pulls on the ``container`` executor: the first pull of an image against a pull of the same
image the node has (pull policy Always: every rank pulls, and a cached image costs only the
manifest's round trip).

``python -m bench.containers [--megabytes N] [--rounds N]`` sets up a private podman and a
private registry on loopback (``bench.podlab``), pushes an image of busybox plus N MB of random
bytes, then, each round: removes the image from the node's cache, pulls it (first pull: every
layer), pulls it again (cached: the manifest and the config, no layer). Each pull is the
executor's own (``Engine``, ``pull --quiet`` then the image's size, as a rank's setup does). It
prints the medians, their ratio, and what the registry served for each kind of pull (from its
access log), which shows what a cached pull fetches.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.podlab import LabError, Podlab, filler_tar
from services.node_agent.container.engine import Engine


async def _pull(engine: Engine, reference: str) -> float:
    """Seconds for the executor's pull of ``reference`` (the pull, then the image's size)."""
    began = time.perf_counter()
    done = await engine.call("pull", "--quiet", reference)
    if done.code != 0:
        raise LabError(done.stderr.decode(errors="replace").strip())
    await engine.image_size(done.stdout.decode().split()[-1])
    return time.perf_counter() - began


def _served_since(lab: Podlab, seen: int) -> tuple[int, int, int]:
    """(requests, blob requests, bytes) the registry served after its first ``seen`` requests."""
    served = lab.served()[seen:]
    blobs = sum("/blobs/" in request for request, _ in served)
    return len(served), blobs, sum(size for _, size in served)


async def bench(lab: Podlab, megabytes: int, rounds: int) -> None:
    reference = lab.push(filler_tar(megabytes), f"filler-{megabytes}mb:1")
    engine = Engine(args=[], conf=lab.conf)
    engine.env = dict(lab.env)
    first: list[float] = []
    cached: list[float] = []
    traffic: dict[str, tuple[int, int, int]] = {}
    for _ in range(rounds):
        lab.forget(reference)
        seen = len(lab.served())
        first.append(await _pull(engine, reference))
        traffic["first"] = _served_since(lab, seen)
        seen = len(lab.served())
        cached.append(await _pull(engine, reference))
        traffic["cached"] = _served_since(lab, seen)
    size = await engine.image_size(reference)
    cold, warm = statistics.median(first), statistics.median(cached)
    print(f"image: {reference}, {size or 0:,} bytes on the node ({megabytes} MB of random bytes)")
    print(f"rounds: {rounds} (medians; the image removed from the node's cache before each)")
    for label, seconds in (("first pull ", cold), ("cached pull", warm)):
        requests, blobs, sent = traffic[label.strip().split()[0]]
        print(
            f"{label}: {seconds * 1000:8.1f} ms   registry: {requests} requests, "
            f"{blobs} blobs, {sent:,} bytes"
        )
    print(f"first / cached: {cold / warm:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=100, help="random bytes in the image")
    parser.add_argument("--rounds", type=int, default=5, help="first and cached pulls each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-containers-") as base:
        lab = Podlab(Path(base))
        try:
            problem = lab.problem()
            if problem is not None:
                raise SystemExit(f"bench.containers: {problem}")
            asyncio.run(bench(lab, args.megabytes, args.rounds))
        finally:
            lab.close()


if __name__ == "__main__":
    main()
