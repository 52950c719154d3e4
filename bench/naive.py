"""The original design, for comparison: sequential, one request per register.

Every meter one after the other, every register its own request (count = the
register's width), decoded with the poller's own functions and written with
its InfluxDB sink, one write per meter; bare pymodbus with the framing of the
meters' transport (Modbus TCP, or RTU for 'rtuovertcp', as bench.floor). Run over
a subset of the meters; the full-fleet time is the subset's time scaled by
meters, since nothing overlaps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from pymodbus.client import AsyncModbusTcpClient

from poller.decode import apply_scaling, decode_raw
from poller.model import FunctionCode, Meter, Transport
from poller.sink import line_prefix, reading_lines, series_key

from .floor import client_for

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


async def _poll(meters: Sequence[Meter], sink: object) -> tuple[int, int]:
    clients: dict[tuple[str, int, Transport], AsyncModbusTcpClient] = {}
    requests = readings = 0
    try:
        for meter in meters:
            client = clients.get((meter.host, meter.port, meter.transport))
            if client is None:
                client = client_for(meter.host, meter.port, meter.transport)
                clients[(meter.host, meter.port, meter.transport)] = client
                await client.connect()
            lines = []
            for reg in meter.device_type.registers:
                call = (client.read_input_registers if reg.function_code is FunctionCode.READ_INPUT_REGISTERS
                        else client.read_holding_registers)
                reply = await call(reg.address, count=reg.words, device_id=meter.slave_address)
                requests += 1
                if reply.isError():
                    continue
                value = apply_scaling(reg, decode_raw(reg, reply.registers))
                read_ms = time.time_ns() // 1_000_000
                lines += reading_lines({reg.id: line_prefix(series_key(meter, reg))}, [(0, reg, value)], [read_ms])
            sink.write(lines)  # type: ignore[attr-defined]
            readings += len(lines)
    finally:
        for c in clients.values():
            c.close()
    return requests, readings


def run_naive(meters: Sequence[Meter], sink: object) -> dict[str, float | int]:
    started = time.perf_counter()
    requests, readings = asyncio.run(_poll(meters, sink))
    return {"meters": len(meters), "registers": requests, "readings": readings,
            "wall_s": time.perf_counter() - started}
