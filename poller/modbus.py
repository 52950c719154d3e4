"""Modbus TCP reads: one connection and one request at a time per host:port.

Only function codes 3 and 4 are ever sent. This module knows nothing of the
database or InfluxDB; it turns a ReadBlock into 16-bit words or a ModbusError.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from .model import FunctionCode, ReadBlock

log = logging.getLogger(__name__)

# pymodbus logs every failed request at ERROR on its own; the poller reports
# failures per meter (first at ERROR, repeats at DEBUG), so keep it quiet.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
BUSY_CODES = frozenset({5, 6})  # try again shortly
SPLIT_CODES = frozenset({2, 3})  # a register in the block does not exist


class ModbusError(Exception):
    """A read failed; `kind` is one word for counting, the message says why."""

    kind = "error"
    # True when the connection can no longer be trusted (timeout, garbage,
    # reset): the next request must go over a fresh connection.
    breaks_connection = True


class ConnectError(ModbusError):
    kind = "connect"


class ResponseTimeout(ModbusError):
    kind = "timeout"


class BadReply(ModbusError):
    kind = "bad_reply"


class ExceptionReply(ModbusError):
    kind = "exception"
    breaks_connection = False

    def __init__(self, code: int, block: ReadBlock, unit: int) -> None:
        self.code = code
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        super().__init__(f"unit {unit} answered {block} with exception {code} ({name})")


def fail_pending_on_disconnect(client: AsyncModbusTcpClient) -> None:
    """Make a request in flight fail at once when the device closes or resets the connection.

    pymodbus notices the loss (connection_lost) but leaves the request's future
    waiting until its timeout: a device that drops the link mid-request would
    cost the full timeout and be reported as silent. Where this pymodbus has no
    such hook, the timeout still ends the request.
    """
    ctx = getattr(client, "ctx", None)
    original = getattr(ctx, "callback_disconnected", None)
    if ctx is None or original is None:  # pragma: no cover - other pymodbus layouts
        return

    def disconnected(exc: Exception | None) -> None:
        original(exc)
        future = getattr(ctx, "response_future", None)
        if isinstance(future, asyncio.Future) and not future.done():
            future.set_exception(ConnectionResetError(
                f"connection closed by the device{f' ({exc})' if exc else ''}"))

    ctx.callback_disconnected = disconnected


class Endpoint:
    """One host:port (a meter or a gateway fronting many unit ids)."""

    def __init__(self, host: str, port: int, connect_timeout: float = 3.0) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()  # one request in flight, whatever the caller does
        self._last_reply = 0.0  # monotonic time the last request ended

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    async def _connected(self, timeout: float) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        self.close()
        # retries=0 and reconnect_delay=0: the poller decides when to try again.
        client = AsyncModbusTcpClient(
            self.host, port=self.port, timeout=timeout, retries=0, reconnect_delay=0,
        )
        try:
            ok = await asyncio.wait_for(client.connect(), timeout=max(timeout, self.connect_timeout) + 1)
        except (TimeoutError, OSError, ModbusException) as exc:
            client.close()
            raise ConnectError(f"cannot connect to {self}: {exc or type(exc).__name__}") from None
        if not ok:
            client.close()
            raise ConnectError(f"cannot connect to {self} (refused, unreachable or name not resolved)")
        fail_pending_on_disconnect(client)
        self._client = client
        return client

    async def read(self, block: ReadBlock, unit: int, timeout: float, pause: float = 0.0) -> list[int]:
        """Read one block from one unit id; the words, exactly `block.count` of them.

        `pause`: the least time between the end of one request on this
        host:port and the start of the next (a quirk of some gateways).
        """
        async with self._lock:
            if pause:
                wait = self._last_reply + pause - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                return await self._read(block, unit, timeout)
            finally:
                self._last_reply = time.monotonic()

    async def _read(self, block: ReadBlock, unit: int, timeout: float) -> list[int]:
        client = await self._connected(timeout)
        client.ctx.comm_params.timeout_connect = timeout  # per device type
        if block.function_code is FunctionCode.READ_HOLDING_REGISTERS:
            call = client.read_holding_registers
        elif block.function_code is FunctionCode.READ_INPUT_REGISTERS:
            call = client.read_input_registers
        else:  # pragma: no cover - FunctionCode has no other members
            raise AssertionError(f"refusing to send function code {block.function_code}")
        try:
            # asyncio.timeout, not wait_for: no extra task per request (wait_for was ~10 % of the
            # event loop's work at 1000 requests a cycle); pymodbus' own timeout fires first anyway.
            async with asyncio.timeout(timeout + 1):
                reply = await call(block.address, count=block.count, device_id=unit)
        except TimeoutError:
            self.close()
            raise ResponseTimeout(f"no reply from {self} unit {unit} to {block} within {timeout:g} s") from None
        except ModbusException as exc:
            self.close()
            text = str(exc)
            if "No response" in text or "timeout" in text.lower():
                raise ResponseTimeout(
                    f"no reply from {self} unit {unit} to {block} within {timeout:g} s") from None
            raise BadReply(f"{self} unit {unit}, {block}: {text}") from None
        except OSError as exc:  # ConnectionError included: closed or reset by the device
            self.close()
            raise BadReply(f"{self} unit {unit}, {block}: {exc}") from None
        if reply.isError():
            code = getattr(reply, "exception_code", None)
            if code is None:
                self.close()
                raise BadReply(f"{self} unit {unit}, {block}: unusable reply {reply}")
            raise ExceptionReply(int(code), block, unit)
        words = list(getattr(reply, "registers", []) or [])
        if len(words) != block.count:
            self.close()
            raise BadReply(f"{self} unit {unit}, {block}: {len(words)} registers in the reply, "
                           f"{block.count} asked for")
        return words

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None
