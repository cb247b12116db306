"""Serving archived lines to readers without the archive files, over Redis.

A request (``reading.ArchiveRequest``, msgpack) is pushed on ``keys.log_requests()``; the
collector that pops it pushes the reply in chunks (``reading.Chunk``) on
``keys.log_reply(request.id)``, the last one ``done`` (or carrying an error). A request with
``meta`` asks for the attempt's ``meta.json`` instead (``reading.attempt_meta``): one chunk,
``meta`` set (``{}`` when this collector's archive dir has no such file).

Invariants: memory stays bounded (the file is read as it is sent, a chunk is about
``serve_chunk_bytes``, and at most ``_AHEAD`` unread chunks wait in Redis: a reader that went
away stops the reply once its key has waited ``reply_ttl_s``); every reply key expires.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import redis.asyncio as aioredis
import structlog

from events import keys
from services.log_collector.settings import LogCollectorSettings
from services.output import formats, reading
from services.output.formats import Record
from services.output.reading import ArchiveRequest, Chunk

log = structlog.get_logger(__name__)

_AHEAD = 8  # chunks pushed but not yet read, at most


class ReaderGone(Exception):
    """Nobody read the reply for ``reply_ttl_s``."""


class ArchiveServer:
    def __init__(self, client: aioredis.Redis, settings: LogCollectorSettings) -> None:
        self.client = client
        self.settings = settings

    async def handle(self, body: bytes) -> None:
        try:
            request = reading.decode_request(body)
        except msgspec.DecodeError as exc:
            log.warning("serve.bad_request", error=str(exc))
            return
        reply = keys.log_reply(request.id)
        with structlog.contextvars.bound_contextvars(
            run=request.run, attempt=request.attempt, rank=request.rank
        ):
            try:
                sent = await self._serve(request, reply)
            except ReaderGone:
                log.warning("serve.reader_gone")
                await self.client.delete(reply)
                return
            log.info("serve.done", lines=sent)

    async def _serve(self, request: ArchiveRequest, reply: str) -> int:
        if request.meta:
            moved = self.settings.archive_dir / formats.meta_path(request.run, request.attempt)
            meta = await asyncio.to_thread(formats.read_meta_file, moved)
            await self._push(reply, Chunk(meta=meta or {}, done=True))
            return 0
        relative = formats.archive_path(request.run, request.attempt, request.rank)
        path: Path = self.settings.archive_dir / relative
        if not await asyncio.to_thread(path.is_file):
            error = f"the log-collector has no archive {relative} (archive dir {path.parent})"
            await self._push(reply, Chunk(done=True, error=error))
            return 0
        chunk: list[Record] = []
        size = sent = 0
        for record in formats.archive_records(path, after=request.after_id, tail=request.tail):
            chunk.append(record)
            size += len(record.raw) + 64
            if size >= self.settings.serve_chunk_bytes:
                await self._push(reply, Chunk(lines=chunk))
                sent += len(chunk)
                chunk, size = [], 0
        await self._push(reply, Chunk(lines=chunk, done=True))
        return sent + len(chunk)

    async def _push(self, reply: str, chunk: Chunk) -> None:
        deadline = time.monotonic() + self.settings.reply_ttl_s
        while await self.client.llen(reply) >= _AHEAD:
            if time.monotonic() > deadline:
                raise ReaderGone(reply)
            await asyncio.sleep(0.01)  # the reader is behind: wait for it to take a chunk
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(reply, reading.encode_msg(chunk))
        pipe.expire(reply, self.settings.reply_ttl_s)
        await pipe.execute()
