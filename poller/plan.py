"""Request planning: a register map -> as few Modbus reads as possible. Pure.

Per function code, registers are sorted by address and merged into one block
while the gap between them stays within `max_gap` registers and the block
within `max_block` registers. With max_gap=0, max_block=125, one register each
at addresses (value width in brackets)

    0[2] 2[2] 4[2] 10[1] 11[1] 200[2]  ->  (0, 6) (10, 2) (200, 2)

and with max_gap=16 the first two blocks merge into (0, 12).

Each block comes with its decode.BlockLayout, built once when it is planned (the
precompiled structs that unpack its reply), so a cycle only runs them.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

from .decode import BlockLayout
from .model import MAX_REGISTERS_PER_READ, DeviceType, ReadBlock, Register


class PlanError(ValueError):
    """The register map cannot be read with these limits."""


# Layouts by (address, registers): the blocks of every meter of a device type share one (1000
# meters of one type: one layout, not 1000 copies of the same structs), for as long as one is planned.
_LAYOUTS: weakref.WeakValueDictionary[tuple[int, tuple[Register, ...]], BlockLayout] = weakref.WeakValueDictionary()


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class PlannedBlock(ReadBlock):
    """A ReadBlock with the layout that decodes its reply, made from its own fields.

    It equals any ReadBlock of the same function code, address and count, as a ReadBlock does.
    """

    layout: BlockLayout = field(init=False)

    def __post_init__(self) -> None:
        layout = _LAYOUTS.get((self.address, self.registers))
        if layout is None:
            layout = _LAYOUTS[self.address, self.registers] = BlockLayout(self)
        object.__setattr__(self, "layout", layout)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReadBlock):
            return NotImplemented
        return (self.function_code, self.address, self.count) == (other.function_code, other.address, other.count)

    __hash__ = ReadBlock.__hash__


def plan_reads(
    registers: Iterable[Register],
    max_block: int = MAX_REGISTERS_PER_READ,
    max_gap: int = 0,
    one_per_value: bool = False,
) -> tuple[ReadBlock, ...]:
    """Group registers into read blocks, holding before input registers, by address.

    Every register lands in exactly one block; a block never exceeds
    `max_block` registers, and never spans a gap of more than `max_gap`
    unrequested registers. Overlapping registers (a uint16 inside a float32,
    say) share the block that covers them. With `one_per_value` (the device
    type's single_value_reads quirk: devices that refuse multi-value reads)
    every register is a block of its own, overlapping ones included.
    """
    if not 1 <= max_block <= MAX_REGISTERS_PER_READ:
        raise PlanError(f"max_block {max_block} outside 1..{MAX_REGISTERS_PER_READ}")
    if max_gap < 0:
        raise PlanError(f"max_gap {max_gap} is negative")
    ordered = sorted(registers, key=lambda r: (r.function_code, r.address, r.end))
    blocks: list[ReadBlock] = []
    members: list[Register] = []
    start = end = 0
    for reg in ordered:
        if reg.words > max_block:
            raise PlanError(f"{reg.measurement} needs {reg.words} registers, more than max_block {max_block}")
        if members and not one_per_value and (
            reg.function_code == members[0].function_code
            and reg.address - end <= max_gap
            and max(end, reg.end) - start <= max_block
        ):
            members.append(reg)
            end = max(end, reg.end)
            continue
        if members:
            blocks.append(PlannedBlock(members[0].function_code, start, end - start, tuple(members)))
        members, start, end = [reg], reg.address, reg.end
    if members:
        blocks.append(PlannedBlock(members[0].function_code, start, end - start, tuple(members)))
    return tuple(blocks)


def plan_device(device_type: DeviceType) -> tuple[ReadBlock, ...]:
    """The read plan of a device type: its registers with its own limits and quirks."""
    return plan_reads(device_type.registers, device_type.max_block, device_type.max_gap,
                      one_per_value=device_type.single_value_reads)


def split_block(block: ReadBlock) -> tuple[ReadBlock, ReadBlock]:
    """Halve a block that drew an exception, to isolate the offending register.

    Each half is trimmed to its own registers, so gap registers the device may
    refuse are no longer asked for.
    """
    if len(block.registers) < 2:
        raise PlanError(f"block {block} holds one register and cannot be split")
    half = len(block.registers) // 2
    first, second = block.registers[:half], block.registers[half:]
    return _tight(block, first), _tight(block, second)


def _tight(block: ReadBlock, registers: tuple[Register, ...]) -> ReadBlock:
    start = min(r.address for r in registers)
    end = max(r.end for r in registers)
    return PlannedBlock(block.function_code, start, end - start, registers)
