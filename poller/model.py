"""The domain objects: parsed once from the database, immutable afterwards."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field


class DataType(enum.IntEnum):
    """registers.data_type codes (1-3 as in the original system)."""

    INT16 = 1  # "int"
    INT32 = 2  # "long"
    FLOAT32 = 3  # "float"
    UINT16 = 4
    UINT32 = 5
    INT64 = 6
    UINT64 = 7
    FLOAT64 = 8

    @property
    def words(self) -> int:
        """How many 16-bit registers one value occupies."""
        return _WORDS[self]

    @property
    def struct_code(self) -> str:
        return _STRUCT[self]

    @property
    def is_float(self) -> bool:
        return self in (DataType.FLOAT32, DataType.FLOAT64)

    @property
    def raw_range(self) -> tuple[int, int] | None:
        """Smallest and largest raw integer, None for floats."""
        if self.is_float:
            return None
        bits = 16 * self.words
        if self in (DataType.INT16, DataType.INT32, DataType.INT64):
            return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return 0, (1 << bits) - 1


_WORDS = {
    DataType.INT16: 1, DataType.UINT16: 1,
    DataType.INT32: 2, DataType.UINT32: 2, DataType.FLOAT32: 2,
    DataType.INT64: 4, DataType.UINT64: 4, DataType.FLOAT64: 4,
}
_STRUCT = {
    DataType.INT16: "h", DataType.UINT16: "H",
    DataType.INT32: "i", DataType.UINT32: "I", DataType.FLOAT32: "f",
    DataType.INT64: "q", DataType.UINT64: "Q", DataType.FLOAT64: "d",
}
for _dt in DataType:  # the table above must agree with struct's sizes
    assert struct.calcsize(">" + _STRUCT[_dt]) == 2 * _WORDS[_dt]


class ByteOrder(enum.StrEnum):
    """Order of a value's bytes on the wire; A is the most significant byte.

    For 64-bit values the same rule extends: CDAB reverses the word order,
    BADC swaps the bytes inside each word, DCBA does both.
    """

    ABCD = "ABCD"  # big-endian (Modbus default)
    CDAB = "CDAB"  # word-swapped
    BADC = "BADC"  # byte-swapped
    DCBA = "DCBA"  # little-endian


class FunctionCode(enum.IntEnum):
    """The only Modbus functions the poller ever sends: both only read."""

    READ_HOLDING_REGISTERS = 3
    READ_INPUT_REGISTERS = 4


MAX_REGISTERS_PER_READ = 125  # Modbus application protocol, 6.3/6.4


@dataclass(frozen=True, slots=True)
class Register:
    """One value of a device type's register map (a row of `registers`)."""

    id: int
    device_type: str
    address: int
    measurement: str
    unit: str | None
    data_type: DataType
    function_code: FunctionCode
    byte_order: ByteOrder = ByteOrder.ABCD
    scale: float = 1.0
    offset: float = 0.0
    scale_factor: str | None = None  # measurement of the register holding 10^sf
    not_available: int | float | None = None  # raw value meaning "no value"
    # registers.kind = 'counter': a total that only grows; poller/counters.py guards it
    counter: bool = False
    counter_max_rate: float | None = None  # the largest plausible rise per second, in `unit`

    @property
    def words(self) -> int:
        return self.data_type.words

    @property
    def end(self) -> int:
        """First address after this value."""
        return self.address + self.data_type.words


@dataclass(frozen=True, slots=True)
class DeviceType:
    """A register map with the device family's quirks (a row of `device_types`)."""

    name: str
    registers: tuple[Register, ...]
    max_block: int = MAX_REGISTERS_PER_READ
    max_gap: int = 16
    timeout_s: float = 3.0
    request_pause_s: float = 0.0  # least time between two requests on the bus
    # Device quirks (README, "Device quirks"):
    connect_pause_s: float = 0.0  # wait after connecting before the first request (Huawei dongles)
    close_after_poll: bool = False  # close the connection once the bus's meters are read (one-client devices)
    single_value_reads: bool = False  # one request per value: the device refuses multi-register reads
    has_counters: bool = field(init=False, repr=False, compare=False)  # any register a counter (counters.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "has_counters", any(r.counter for r in self.registers))


class Transport(enum.StrEnum):
    """How a meter's requests reach it (energy_meters.transport)."""

    TCP = "tcp"  # Modbus TCP (MBAP) to host:port
    RTU_OVER_TCP = "rtuovertcp"  # RTU frames with CRC over a TCP socket (transparent serial servers)
    UDP = "udp"  # Modbus UDP (MBAP in datagrams) to host:port
    SERIAL = "serial"  # RTU on a local serial device; host is its path, e.g. /dev/ttyUSB0


PARITIES = {"N": "none", "E": "even", "O": "odd"}


@dataclass(frozen=True, slots=True)
class SerialLine:
    """A serial bus's settings (energy_meters.baudrate, parity, stopbits, bytesize)."""

    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8

    @property
    def char_time_s(self) -> float:
        """Time on the wire of one character: start bit, data bits, parity bit, stop bits."""
        bits = 1 + self.bytesize + (self.parity != "N") + self.stopbits
        return bits / self.baudrate

    @property
    def silence_s(self) -> float:
        """The quiet time that separates two RTU frames: 3.5 characters, and a fixed 1.75 ms
        above 19200 baud (Modbus over Serial Line, 2.5.1.1)."""
        return 0.00175 if self.baudrate > 19200 else 3.5 * self.char_time_s

    def __str__(self) -> str:
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


Wire = tuple[str, str, int]  # BusAddress.wire: ("tcp" | "udp" | "serial", host or device path, port)


@dataclass(frozen=True, slots=True)
class BusAddress:
    """What serialises requests: one host:port for the TCP kinds, one device path for serial.

    Meters on equal addresses share one connection and one request at a time. Two
    addresses with the same `wire` but not equal (Modbus TCP and RTU over TCP on one
    host:port, a serial device at two baud rates) describe one wire two ways: a
    configuration error (store.py).
    """

    transport: Transport
    host: str  # host name or address; the device path for serial
    port: int = 502  # 0 for serial
    line: SerialLine | None = None  # serial only
    # The physical thing: a TCP socket, a UDP socket or a serial device. Made once with the address
    # (it is looked at per bus and cycle, and per meter and tick in the main process of a pool).
    wire: Wire = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.transport is Transport.SERIAL:
            wire = ("serial", self.host, 0)
        else:
            wire = ("udp" if self.transport is Transport.UDP else "tcp", self.host, self.port)
        object.__setattr__(self, "wire", wire)

    def __str__(self) -> str:
        """`192.0.2.10:502` (Modbus TCP), `rtuovertcp 192.0.2.20:4196`, `udp ...`, `serial /dev/ttyUSB0 9600 8N1`."""
        if self.transport is Transport.SERIAL:
            return f"serial {self.host} {self.line or SerialLine()}"
        where = f"{self.host}:{self.port}"
        return where if self.transport is Transport.TCP else f"{self.transport.value} {where}"


@dataclass(frozen=True, slots=True)
class Meter:
    """One Modbus device to poll (a row of `energy_meters`)."""

    id: int
    host: str  # for serial: the device path
    port: int
    slave_address: int
    device_type: DeviceType
    description: str | None = None
    poll_cron: str | None = None
    enabled: bool = True
    transport: Transport = Transport.TCP
    line: SerialLine | None = None  # serial only
    # The meter's bus (BusAddress), made once with the meter: it is looked at per meter and cycle
    # (and per meter and tick in the main process of a pool), where making it cost 1.4 us each time.
    bus: BusAddress = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.transport is Transport.SERIAL:
            bus = BusAddress(self.transport, self.host, 0, self.line or SerialLine())
        else:
            # host names are case-insensitive: `Gateway.local` and `gateway.local` are one bus
            bus = BusAddress(self.transport, self.host.lower(), self.port)
        object.__setattr__(self, "bus", bus)

    def __str__(self) -> str:
        return f"meter {self.id} ({self.bus} unit {self.slave_address}, {self.device_type.name})"


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One Modbus request: `count` registers from `address` with one function code."""

    function_code: FunctionCode
    address: int
    count: int
    registers: tuple[Register, ...] = field(compare=False)

    def __str__(self) -> str:
        return f"fc{int(self.function_code)} {self.address}..{self.address + self.count - 1}"
