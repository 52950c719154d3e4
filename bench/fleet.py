"""The simulated fleet: gateways on loopback, each fronting several unit ids.

    python -m bench.fleet --gateways 100 --units 10 --values 30 --latency-ms 10

binds one Modbus TCP server per gateway (`--framer rtu`: RTU over TCP) on loopback,
all in one event loop, one process, so the poller's CPU time stays its own; prints one JSON line
{"ports": [...]} on stdout once every port listens, and serves until SIGTERM,
then prints {"requests": N, ...} on stdout. Every unit of every gateway serves
the same register map (`register_map`): `values` float32 input registers,
contiguous from address 0, frozen values, every reply after `latency_ms`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from poller.model import DataType, FunctionCode, Register
from virtual_server.device import make_device
from virtual_server.server import Framer, SimulatedServer

DEVICE_TYPE = "bench_meter"

# Names and units in the style of an SDM630 map; cycled when more are asked for.
_NAMES = [
    ("voltage_l1", "V"), ("voltage_l2", "V"), ("voltage_l3", "V"),
    ("current_l1", "A"), ("current_l2", "A"), ("current_l3", "A"),
    ("power_l1", "W"), ("power_l2", "W"), ("power_l3", "W"),
    ("apparent_power_l1", "VA"), ("apparent_power_l2", "VA"), ("apparent_power_l3", "VA"),
    ("reactive_power_l1", "var"), ("reactive_power_l2", "var"), ("reactive_power_l3", "var"),
    ("power_factor_l1", None), ("power_factor_l2", None), ("power_factor_l3", None),
    ("phase_angle_l1", None), ("phase_angle_l2", None), ("phase_angle_l3", None),
    ("voltage_avg", "V"), ("current_avg", "A"), ("current_sum", "A"),
    ("power_total", "W"), ("apparent_power_total", "VA"), ("reactive_power_total", "var"),
    ("power_factor_total", None), ("frequency", "Hz"), ("energy_import", "kWh"),
]


@dataclass(frozen=True)
class FleetSpec:
    gateways: int = 100
    units: int = 10  # unit ids 1..units behind every gateway
    values: int = 30  # float32 values per unit (2 registers each)
    latency_ms: float = 10.0

    @property
    def meters(self) -> int:
        return self.gateways * self.units

    @property
    def registers_per_unit(self) -> int:
        return 2 * self.values

    @property
    def readings_per_cycle(self) -> int:
        return self.meters * self.values

    def describe(self) -> str:
        return (f"{self.gateways} gateways x {self.units} unit ids x {self.registers_per_unit} registers "
                f"({self.values} float32 values) = {self.readings_per_cycle} readings a cycle, "
                f"{self.latency_ms:g} ms device latency")


def register_map(values: int) -> tuple[Register, ...]:
    """`values` float32 input registers (fc 4), contiguous from address 0."""
    regs = []
    for i in range(values):
        name, unit = _NAMES[i % len(_NAMES)]
        if i >= len(_NAMES):
            name = f"{name}_{i // len(_NAMES)}"
        regs.append(Register(id=i + 1, device_type=DEVICE_TYPE, address=2 * i, measurement=name, unit=unit,
                             data_type=DataType.FLOAT32, function_code=FunctionCode.READ_INPUT_REGISTERS))
    return tuple(regs)


TRANSPORTS: dict[Framer, str] = {"socket": "tcp", "rtu": "rtuovertcp"}  # energy_meters.transport per framer


def seed_sql(spec: FleetSpec, ports: list[int], framer: Framer = "socket") -> str:
    """SQL that puts the fleet in an init.sql database (one device type, one row per unit).

    Replaces every energy_meters row; the rows' transport is the fleet's framing
    ('tcp' for Modbus TCP, 'rtuovertcp' for RTU over TCP). The device type and its
    registers are inserted only once, so that the SQL can be run again for another fleet.
    """
    out = [f"INSERT INTO device_types (name, description) VALUES ('{DEVICE_TYPE}', 'bench: simulated meter') "
           "ON CONFLICT DO NOTHING;"]
    rows = []
    for reg in register_map(spec.values):
        unit = f"'{reg.unit}'" if reg.unit else "NULL"
        rows.append(f"('{DEVICE_TYPE}', {reg.address}, '{reg.measurement}', {unit}, "
                    f"{int(reg.data_type)}, {int(reg.function_code)})")
    out.append("INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, "
               "function_code) VALUES\n" + ",\n".join(rows) + "\nON CONFLICT DO NOTHING;")
    transport = TRANSPORTS[framer]
    meters = [f"('127.0.0.1', {port}, {unit}, '{DEVICE_TYPE}', 'bench gateway {g} unit {unit}', '{transport}')"
              for g, port in enumerate(ports) for unit in range(1, spec.units + 1)]
    out.append("DELETE FROM energy_meters;")
    out.append("INSERT INTO energy_meters (host, port, slave_address, type, description, transport) VALUES\n"
               + ",\n".join(meters) + ";")
    return "\n".join(out) + "\n"


def _frozen(words: Mapping[tuple[int, int], int]) -> Callable[[], Mapping[tuple[int, int], int]]:
    return lambda: words


async def serve(spec: FleetSpec, seed: int, framer: Framer = "socket") -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    regs = register_map(spec.values)
    servers = []
    for g in range(spec.gateways):
        words = make_device(f"{DEVICE_TYPE}-{g}", regs, seed).words()  # frozen: built once
        bank = _frozen(words)
        servers.append(SimulatedServer(units=dict.fromkeys(range(1, spec.units + 1), bank),
                                       latency_s=spec.latency_ms / 1000.0))
    ports = [await s.start_tcp("127.0.0.1", 0, framer=framer) for s in servers]
    print(json.dumps({"ports": ports}), flush=True)
    await stop.wait()
    for s in servers:
        await s.stop()
    print(json.dumps({"requests": sum(s.stats.requests for s in servers),
                      "max_in_flight_per_gateway": max(s.stats.max_in_flight for s in servers),
                      "connections": sum(s.stats.connections for s in servers)}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--gateways", type=int, default=FleetSpec.gateways)
    p.add_argument("--units", type=int, default=FleetSpec.units)
    p.add_argument("--values", type=int, default=FleetSpec.values)
    p.add_argument("--latency-ms", type=float, default=FleetSpec.latency_ms)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--framer", choices=("socket", "rtu"), default="socket",
                   help="socket: Modbus TCP gateways (default); rtu: RTU over TCP (transparent serial servers)")
    a = p.parse_args(argv)
    return asyncio.run(serve(FleetSpec(a.gateways, a.units, a.values, a.latency_ms), a.seed, a.framer))


if __name__ == "__main__":
    sys.exit(main())
