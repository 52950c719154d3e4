"""poller/onboard/signatures.py: `identify` reads only what can still decide, and names what
reading every signature register would name.

Generated libraries of families (rows on a few shared registers, ranges that overlap or
not) against generated devices (registers that answer with some value, or refuse).
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from poller.modbus import ExceptionReply
from poller.model import ByteOrder, DataType, FunctionCode, ReadBlock
from poller.onboard.signatures import Signature, identify

ADDRESSES = (0, 2, 4, 100, 64514)


def row(family: str, address: int, low: int, high: int) -> Signature:
    return Signature(family, address, FunctionCode(3), DataType.UINT16, ByteOrder.ABCD, 1.0, low, high, "test row")


rows = st.builds(lambda a, lo, span: (a, lo, lo + span), st.sampled_from(ADDRESSES), st.integers(0, 20),
                 st.integers(0, 10))
libraries = st.dictionaries(st.sampled_from([f"family_{i}" for i in range(12)]),
                            st.lists(rows, min_size=1, max_size=4, unique_by=lambda r: r[0]), min_size=1, max_size=12)
devices = st.dictionaries(st.sampled_from(ADDRESSES), st.integers(0, 30))  # absent address: refused


def reading(device: dict[int, int], asked: list[int]):  # type: ignore[no-untyped-def]
    async def read(fc: int, address: int, count: int, unit: int) -> list[int]:
        asked.append(address)
        if address not in device:
            raise ExceptionReply(2, ReadBlock(FunctionCode(fc), address, count, ()), unit)
        return [device[address]]
    return read


def brute_force(library: dict[str, list[Signature]], device: dict[int, int]) -> list[str]:
    """Every row of every family read: the families whose rows all hold, the most rows winning."""
    matching = [(len(sigs), name) for name, sigs in library.items()
                if all(s.address in device and s.holds([device[s.address]]) for s in sigs)]
    best = max((n for n, _ in matching), default=0)
    return sorted(name for n, name in matching if n == best)


@given(spec=libraries, device=devices)
@settings(max_examples=400)
def test_identify_names_what_reading_everything_names_in_fewer_reads(spec, device):
    library = {name: [row(name, *r) for r in rs] for name, rs in spec.items()}
    asked: list[int] = []
    result = asyncio.run(identify(library, reading(device, asked), unit=1))
    assert result.families == brute_force(library, device)
    assert len(asked) == len(set(asked))  # each register once
    assert set(asked) <= {s.address for sigs in library.values() for s in sigs}
    for name in result.families:  # a family named had every one of its rows read
        assert {s.address for s in library[name]} <= set(asked)


def test_a_register_no_remaining_family_needs_is_not_read():
    """Ten families share the voltage at 0, ten others the frequency at 500, each family has its
    own code register: a device of the first kind refuses 500, so the second ten's codes are never
    asked for (12 reads, not 22)."""
    library = {f"v{i}": [row(f"v{i}", 0, 100, 300), row(f"v{i}", 1000 + i, i, i)] for i in range(10)}
    library |= {f"f{i}": [row(f"f{i}", 500, 45, 65), row(f"f{i}", 2000 + i, i, i)] for i in range(10)}
    asked: list[int] = []
    result = asyncio.run(identify(library, reading({0: 230, 1003: 3}, asked), unit=1))
    assert result.families == ["v3"]
    assert sorted(asked) == [0, 500, *range(1000, 1010)]


def test_a_device_no_family_claims_has_every_signature_register_read():
    """What an unknown device gives at each signature register is where its map starts."""
    library = {f"v{i}": [row(f"v{i}", 0, 100, 300), row(f"v{i}", 1000 + i, i, i)] for i in range(10)}
    asked: list[int] = []
    result = asyncio.run(identify(library, reading({0: 50, 1004: 9}, asked), unit=1))
    assert result.families == [] and sorted(asked) == [0, *range(1000, 1010)]
    assert result.answered == {(3, 0, 1): [50], (3, 1004, 1): [9]} and len(result.refused) == 9
