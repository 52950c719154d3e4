"""Request planning: worked examples and properties."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.model import DataType, DeviceType, FunctionCode, Register
from poller.plan import PlanError, plan_device, plan_reads, split_block

HR, IR = FunctionCode.READ_HOLDING_REGISTERS, FunctionCode.READ_INPUT_REGISTERS


def reg(address: int, data_type: DataType = DataType.UINT16, fc: FunctionCode = HR, rid: int | None = None):
    return Register(rid if rid is not None else address + 100_000 * int(fc), "t", address, f"r{fc}_{address}",
                    None, data_type, fc)


def spans(blocks):
    return [(int(b.function_code), b.address, b.count) for b in blocks]


def test_telegrafs_worked_example():
    # [1,2,3,5,6,10,11,12,14] -> (1,3),(5,2),(10,3),(14,1)
    regs = [reg(a) for a in (1, 2, 3, 5, 6, 10, 11, 12, 14)]
    assert spans(plan_reads(regs, max_gap=0)) == [(3, 1, 3), (3, 5, 2), (3, 10, 3), (3, 14, 1)]
    assert spans(plan_reads(regs, max_gap=1)) == [(3, 1, 6), (3, 10, 5)]
    assert spans(plan_reads(regs, max_gap=4)) == [(3, 1, 14)]


def test_docstring_example_with_mixed_widths():
    regs = [reg(0, DataType.FLOAT32), reg(2, DataType.FLOAT32), reg(4, DataType.FLOAT32),
            reg(10), reg(11), reg(200, DataType.UINT32)]
    assert spans(plan_reads(regs, max_gap=0)) == [(3, 0, 6), (3, 10, 2), (3, 200, 2)]
    assert spans(plan_reads(regs, max_gap=16)) == [(3, 0, 12), (3, 200, 2)]


def test_function_codes_never_share_a_block():
    regs = [reg(0, fc=HR), reg(1, fc=IR), reg(2, fc=HR)]
    assert spans(plan_reads(regs, max_gap=16)) == [(3, 0, 3), (4, 1, 1)]


def test_max_block_cuts_and_a_value_never_straddles_two_blocks():
    regs = [reg(a, DataType.FLOAT32) for a in range(0, 300, 2)]  # 150 floats = 300 registers
    blocks = plan_reads(regs, max_block=125)
    assert [b.count for b in blocks] == [124, 124, 52]
    assert sum(len(b.registers) for b in blocks) == 150


def test_sixty_contiguous_values_cost_one_request():
    regs = [reg(a, DataType.FLOAT32) for a in range(0, 120, 2)]
    assert spans(plan_reads(regs)) == [(3, 0, 120)]


def test_overlapping_values_share_a_block():
    regs = [reg(0, DataType.FLOAT32, rid=1), reg(1, DataType.UINT16, rid=2)]
    assert spans(plan_reads(regs)) == [(3, 0, 2)]


def test_bad_limits_are_rejected():
    with pytest.raises(PlanError):
        plan_reads([reg(0)], max_block=126)
    with pytest.raises(PlanError):
        plan_reads([reg(0, DataType.UINT64)], max_block=3)


def test_split_isolates_and_trims():
    regs = [reg(0), reg(1), reg(5), reg(9)]
    (block,) = plan_reads(regs, max_gap=16)
    first, second = split_block(block)
    assert spans([first, second]) == [(3, 0, 2), (3, 5, 5)]
    a, b = split_block(second)
    assert spans([a, b]) == [(3, 5, 1), (3, 9, 1)]
    with pytest.raises(PlanError):
        split_block(a)


registers_strategy = st.lists(
    st.tuples(st.integers(0, 600), st.sampled_from(list(DataType)), st.sampled_from([HR, IR])),
    max_size=80,
)


@settings(max_examples=300)
@given(registers_strategy, st.integers(1, 125), st.integers(0, 30))
def test_planning_properties(specs, max_block, max_gap):
    regs = [Register(i, "t", a, f"m{i}", None, dt, fc) for i, (a, dt, fc) in enumerate(specs)]
    if any(r.words > max_block for r in regs):
        with pytest.raises(PlanError):
            plan_reads(regs, max_block, max_gap)
        return
    blocks = plan_reads(regs, max_block, max_gap)
    # every register is read exactly once
    seen = [r.id for b in blocks for r in b.registers]
    assert sorted(seen) == sorted(r.id for r in regs)
    for b in blocks:
        assert 1 <= b.count <= max_block
        for r in b.registers:
            assert r.function_code == b.function_code
            assert b.address <= r.address and r.end <= b.address + b.count
        # no gap wider than max_gap inside a block
        covered = sorted({a for r in b.registers for a in range(r.address, r.end)})
        assert covered[0] == b.address and covered[-1] == b.address + b.count - 1
        assert all(y - x - 1 <= max_gap for x, y in itertools.pairwise(covered))
    # greedy: a block could not have taken the next register of its function code
    for prev, nxt in itertools.pairwise(blocks):
        if prev.function_code == nxt.function_code:
            first = min(nxt.registers, key=lambda r: (r.address, r.end))
            gap = first.address - (prev.address + prev.count)
            assert gap > max_gap or max(prev.address + prev.count, first.end) - prev.address > max_block


def test_by_default_no_unrequested_register_is_read():
    # strict devices refuse a request that touches an unassigned register; gaps are opt-in
    assert spans(plan_reads([reg(0), reg(2)])) == [(3, 0, 1), (3, 2, 1)]


def test_limits_that_cannot_work_are_named():
    with pytest.raises(PlanError, match=r"^max_block 126 outside 1\.\.125$"):
        plan_reads([reg(0)], max_block=126)
    with pytest.raises(PlanError, match=r"^max_block 0 outside 1\.\.125$"):
        plan_reads([reg(0)], max_block=0)
    with pytest.raises(PlanError, match=r"^max_gap -1 is negative$"):
        plan_reads([reg(0)], max_gap=-1)
    with pytest.raises(PlanError, match=r"^r3_7 needs 4 registers, more than max_block 3$"):
        plan_reads([reg(7, DataType.UINT64)], max_block=3)
    (single,) = plan_reads([reg(5)])
    with pytest.raises(PlanError, match=r"^block fc3 5\.\.5 holds one register and cannot be split$"):
        split_block(single)


def test_one_request_per_value_for_a_device_that_refuses_multi_value_reads():
    # the single_value_reads quirk: each value is a request of its own (its own width), overlapping
    # ones too, whatever max_gap allows; still holding before input registers, by address
    f0, u1, h3, i5 = reg(0, DataType.FLOAT32, rid=1), reg(1, rid=2), reg(3, DataType.UINT32), reg(5, fc=IR)
    blocks = plan_reads([i5, h3, u1, f0], max_gap=16, one_per_value=True)
    assert spans(blocks) == [(3, 0, 2), (3, 1, 1), (3, 3, 2), (4, 5, 1)]
    assert [b.registers for b in blocks] == [(f0,), (u1,), (h3,), (i5,)]
    # a value wider than max_block is refused with the quirk as without it: no block exceeds it
    for one_per_value in (False, True):
        with pytest.raises(PlanError, match="needs 2 registers, more than max_block 1"):
            plan_reads([f0], max_block=1, one_per_value=one_per_value)


def test_a_device_type_is_planned_with_its_own_limits_and_quirk():
    regs = (reg(0), reg(2), reg(3), reg(4))
    dtype = DeviceType("t", regs, max_block=3, max_gap=1)
    # a one-register gap is read through; a block stops at 3 registers
    assert spans(plan_device(dtype)) == [(3, 0, 3), (3, 3, 2)]
    assert spans(plan_device(replace(dtype, single_value_reads=True))) == [(3, 0, 1), (3, 2, 1), (3, 3, 1), (3, 4, 1)]


def test_a_planned_block_carries_the_layout_that_decodes_it():
    """plan_reads builds each block's decode.BlockLayout once; the blocks of meters of one type
    (the same registers at the same address) share one, a split half has its own."""
    from poller.decode import BlockLayout, decode_block_values

    regs = [reg(a, DataType.FLOAT32) for a in range(0, 8, 2)]
    (block,) = plan_reads(regs)
    (again,) = plan_reads(regs)
    assert isinstance(block.layout, BlockLayout) and again.layout is block.layout
    assert len(block.layout.passes) == 1 and block.layout.words == 8
    words = [0x4366, 0x199A, 0, 0, 0xC49A, 0x5000, 0x4059, 0]
    assert [v for _, _, v in decode_block_values([(block, words)])[0]] == [230.10000610351562, 0.0, -1234.5, 3.390625]
    first, second = split_block(block)
    assert (first.address, first.layout.words, second.address, second.layout.words) == (0, 4, 4, 4)
    assert first.layout is not block.layout and second.layout is not first.layout
    assert [v for _, _, v in decode_block_values([(second, words[4:])])[0]] == [-1234.5, 3.390625]
    moved = replace(block, address=2, count=6, registers=block.registers[1:])
    assert moved.layout is not block.layout and moved.layout.words == 6


def test_a_planned_block_is_a_read_block_as_before():
    """Equal, with equal hashes, to the ReadBlock of the same function code, address and count
    (whatever registers: they never took part), unequal to any other."""
    from poller.model import ReadBlock

    (block,) = plan_reads([reg(3), reg(4)])
    same = ReadBlock(HR, 3, 2, ())
    assert block == same and same == block and hash(block) == hash(same) and {same: 1}[block] == 1
    assert not block != same
    for other in (ReadBlock(IR, 3, 2, ()), ReadBlock(HR, 4, 2, ()), ReadBlock(HR, 3, 1, ())):
        assert block != other and other != block
    assert block != (3, 3, 2) and str(block) == "fc3 3..4"
