"""The metrics endpoint: the process's registry in Prometheus' text format, then any text a
service renders itself (the node-agent's DCGM gauges), parsed by prometheus-client's parser."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from services.core.metrics import CONTENT_TYPE, serve
from services.node_agent.telemetry import GpuSample, Telemetry


async def get(port: int, target: str) -> tuple[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    answer = (await reader.read()).decode()
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition("\r\n\r\n")
    return head, body


async def test_metrics_are_the_registry_then_the_extra_text() -> None:
    registry = CollectorRegistry()
    Counter("runplane_things", "Things.", ["kind"], registry=registry).labels("a").inc(3)
    telemetry = Telemetry("n1", ["GPU-0"], "h100")
    telemetry.record([GpuSample(0, 55, 1234, 301.5)])
    server = await serve("127.0.0.1", 0, telemetry.exposition, registry=registry)
    try:
        port = server.sockets[0].getsockname()[1]
        head, body = await get(port, "/metrics?x=1")
        missing, _ = await get(port, "/")
    finally:
        server.close()
        await server.wait_closed()
    assert head.startswith("HTTP/1.0 200 OK")
    assert f"Content-Type: {CONTENT_TYPE}" in head
    assert missing.startswith("HTTP/1.0 404")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
    assert samples["runplane_things_total", (("kind", "a"),)] == 3
    gpu = (("Hostname", "n1"), ("UUID", "GPU-0"), ("gpu", "0"), ("modelName", "h100"))
    assert samples["DCGM_FI_DEV_GPU_UTIL", gpu] == 55
    assert samples["DCGM_FI_DEV_POWER_USAGE", gpu] == 301.5
