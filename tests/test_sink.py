"""Line protocol: the contract's tags, escaping, the read's timestamp."""

from __future__ import annotations

from poller.model import DataType, DeviceType, FunctionCode, Meter, Register
from poller.sink import StdoutSink, reading_lines, series_key

REG = Register(7, "sdm", 0, "voltage_l1", "V", DataType.FLOAT32, FunctionCode.READ_INPUT_REGISTERS)
DTYPE = DeviceType("sdm 630", (REG,))


def test_point_schema():
    meter = Meter(3, "gw.local", 502, 12, DTYPE, description="Main board, east=wing")
    (line,) = reading_lines({REG.id: series_key(meter, REG)}, [(0, REG, 230.5)], [1_700_000_000_123])
    assert line == ("voltage_l1,description=Main\\ board\\,\\ east\\=wing,host=gw.local,meter=3,"
                    "slave_address=12,type=sdm\\ 630,unit=V value=230.5 1700000000123")


def test_no_empty_tags_and_float_values():
    reg = Register(8, "sdm", 0, "power factor", None, DataType.INT16, FunctionCode.READ_HOLDING_REGISTERS)
    meter = Meter(1, "h", 502, 1, DTYPE, description="  ")
    assert series_key(meter, reg) == "power\\ factor,host=h,meter=1,slave_address=1,type=sdm\\ 630"
    (line,) = reading_lines({reg.id: series_key(meter, reg)}, [(0, reg, 5.0)], [1])
    assert line.endswith(" value=5.0 1")


def test_stdout_sink(capsys):
    StdoutSink().write(["a value=1.0 1", "b value=2.0 2"])
    assert capsys.readouterr().out == "a value=1.0 1\nb value=2.0 2\n"
