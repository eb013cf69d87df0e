"""A code object's control flow in a canonical form: what it does, not how it was laid out.

From Python 3.12 on, the compiler lays out the same code differently when only line numbers
differ: it keeps a ``NOP`` that carries a line of its own, duplicates or shares a small exit
block depending on whether it has a line number, inverts a conditional jump to fall through
into whichever block comes next, and (3.13) fuses two ``LOAD_FAST`` into one
``LOAD_FAST_LOAD_FAST`` only when both sit on one line. So a comment or a wrapped line can
change ``co_code`` and the exception table although the code does exactly the same.

:func:`control_flow` undoes all of that. Each instruction becomes a node labelled with its
operation and operand (a constant by value, never by its index in ``co_consts``), its
exception handler's stack depth, and edges to the instructions that can run next: the next
one, its jump target, its exception handler. Jumps that merely go somewhere else and ``NOP``
are skipped over; fused instructions are split; a conditional jump is written with one
polarity. Nodes that behave alike wherever control goes from them on (a bisimulation, as
for the states of a minimal automaton) are merged, which undoes block duplication, and the
merged graph is numbered in the order a depth-first walk from the first instruction meets
it. Two code objects get equal forms only if their graphs run the same operations on the
same operands in the same order from every point: never for code that does something else.
Line numbers, positions, file names and unused constants (the docstring) are not in it.
"""

from __future__ import annotations

import dis
import types
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["control_flow"]

# Operations that only say where to go next, or nothing at all.
_PASS_THROUGH = frozenset({"NOP", "NOT_TAKEN", "EXTENDED_ARG", "CACHE"})  # NOT_TAKEN: 3.14
_UNCONDITIONAL_JUMPS = frozenset(
    {
        "JUMP_FORWARD",
        "JUMP_BACKWARD",
        "JUMP_BACKWARD_NO_INTERRUPT",
        "JUMP_ABSOLUTE",
        "JUMP",
        "JUMP_NO_INTERRUPT",
    }
)
# Operations after which control never reaches the next instruction.
_NO_FALL_THROUGH = frozenset({"RETURN_VALUE", "RETURN_CONST", "RAISE_VARARGS", "RERAISE"})
# A conditional jump and its mirror image: "jump if true to A, else B" is "jump if false to
# B, else A". Written in one polarity, the block order the compiler chose no longer shows.
_MIRRORED = {
    "POP_JUMP_IF_TRUE": "POP_JUMP_IF_FALSE",
    "POP_JUMP_IF_NOT_NONE": "POP_JUMP_IF_NONE",
}
# Fused instructions (3.13+): each half is an instruction of its own, operands 4 bits each.
_FUSED = {
    "LOAD_FAST_LOAD_FAST": ("LOAD_FAST", "LOAD_FAST"),
    "STORE_FAST_LOAD_FAST": ("STORE_FAST", "LOAD_FAST"),
    "STORE_FAST_STORE_FAST": ("STORE_FAST", "STORE_FAST"),
    "LOAD_FAST_BORROW_LOAD_FAST_BORROW": ("LOAD_FAST", "LOAD_FAST"),
}
# Variants the compiler picks by an analysis of the layout, doing the same for the code it
# emits them in: a checked load where the local could not be proved bound, a borrowed one
# (3.14) where the reference is known to outlive its use.
_SAME_AS = {"LOAD_FAST_CHECK": "LOAD_FAST", "LOAD_FAST_BORROW": "LOAD_FAST"}
_JUMPS = frozenset(getattr(dis, "hasjump", ())) | frozenset(dis.hasjrel) | frozenset(dis.hasjabs)
_CONSTANTS = frozenset(dis.hasconst)
_SPIN = "SPIN"  # a jump to itself: a loop doing nothing, forever


class _Handler(NamedTuple):
    start: int
    end: int
    target: int
    depth: int
    lasti: bool


def control_flow(code: types.CodeType, constant_key: Callable[[object], str]) -> str:
    """The canonical control-flow graph of ``code``'s own instructions (not nested code).

    One line per node: its label (operation, operand, and the stack depth and ``lasti`` flag
    of its exception handler, if any), ``>``, then the numbers of the nodes control can go
    to next, in a fixed order (next, jump target, exception handler). ``constant_key(value)``
    stands for a constant operand, as text without white space: it must tell apart constants
    that are not interchangeable (``1``, ``1.0`` and ``True`` are equal in Python), and may
    stand for a nested code object by its own canonical form.
    """
    graph = _Graph(code, constant_key)
    classes = _bisimulation_classes(graph.labels, graph.successors)
    return _numbered(graph.entry, graph.labels, graph.successors, classes)


class _Graph:
    """Instructions as nodes (0..n-1), pass-through instructions skipped over."""

    def __init__(self, code: types.CodeType, constant_key: Callable[[object], str]) -> None:
        self.labels: list[str] = []
        self.successors: list[list[int]] = []
        self._node_at: dict[int, int] = {}  # offset -> the node an instruction there became
        self._leads_to: dict[int, int] = {}  # offset -> offset, for pass-through instructions
        edges: list[tuple[int, list[tuple[bool, int]]]] = []  # (node, [(is_offset, n)])
        instructions = list(dis.get_instructions(code))
        handlers = _exception_handlers(code)[::-1]
        for position, instruction in enumerate(instructions):
            offset, name = instruction.offset, instruction.opname
            after = instructions[position + 1].offset if position + 1 < len(instructions) else -1
            if name in _PASS_THROUGH or name in _UNCONDITIONAL_JUMPS:
                self._leads_to[offset] = (
                    int(instruction.argval) if name in _UNCONDITIONAL_JUMPS else after
                )
                continue
            while handlers and handlers[-1].end <= offset:
                handlers.pop()  # the table runs in order of offsets, as the instructions do
            handler = handlers[-1] if handlers and handlers[-1].start <= offset else None
            on = "" if handler is None else f" !{handler.depth}{'+' if handler.lasti else ''}"
            on_error = [] if handler is None else [(True, handler.target)]
            if name in _FUSED:
                first, second = _FUSED[name]
                arg = int(instruction.arg or 0)
                head = self._node_at[offset] = self._node(f"{first} {arg >> 4}{on}")
                tail = self._node(f"{second} {arg & 15}{on}")
                edges.append((head, [(False, tail), *on_error]))
                edges.append((tail, [(True, after), *on_error]))
                continue
            name = _SAME_AS.get(name, name)
            onward = [] if name in _NO_FALL_THROUGH else [(True, after)]
            operand = "" if instruction.arg is None else str(instruction.arg)
            if instruction.opcode in _JUMPS:
                onward.append((True, int(instruction.argval)))
                name = name.replace("_FORWARD", "").replace("_BACKWARD", "")  # 3.11
                if name in _MIRRORED:
                    name = _MIRRORED[name]
                    onward.reverse()
                operand = ""
            elif instruction.opcode in _CONSTANTS:
                operand = "=" + constant_key(instruction.argval)
            node = self._node_at[offset] = self._node(f"{name} {operand}{on}")
            edges.append((node, [*onward, *on_error]))
        for node, targets in edges:
            self.successors[node] = [
                self._resolve(n) if is_offset else n for is_offset, n in targets
            ]
        self.entry = self._resolve(instructions[0].offset if instructions else -1)

    def _node(self, label: str) -> int:
        self.labels.append(label)
        self.successors.append([])
        return len(self.labels) - 1

    def _resolve(self, offset: int) -> int:
        """The node control reaches from ``offset``, passing through jumps and ``NOP``."""
        passed: list[int] = []
        while offset not in self._node_at:
            if offset in passed or offset not in self._leads_to:
                # jumps in a circle, or off the end: nothing more happens, forever
                self._node_at[offset] = self._node(_SPIN)
                break
            passed.append(offset)
            offset = self._leads_to[offset]
        node = self._node_at[offset]
        for visited in passed:
            self._node_at[visited] = node
        return node


def _exception_handlers(code: types.CodeType) -> list[_Handler]:
    """The entries of ``code``'s exception table (3.11+), offsets in bytes.

    The format (CPython's ``InternalDocs/exception_handling.md``): each entry is four
    varints (start, length, target in code units; depth * 2 + lasti), six bits a byte,
    0x40 marking a continuation and 0x80 the first byte of an entry.
    """
    table = iter(getattr(code, "co_exceptiontable", b""))

    def varint(byte: int) -> int:
        value = byte & 63
        while byte & 64:
            byte = next(table)
            value = (value << 6) | (byte & 63)
        return value

    handlers = []
    for byte in table:
        start = varint(byte)
        end = start + varint(next(table))
        target = varint(next(table))
        depth_lasti = varint(next(table))
        handlers.append(
            _Handler(2 * start, 2 * end, 2 * target, depth_lasti >> 1, bool(depth_lasti & 1))
        )
    return handlers


def _bisimulation_classes(labels: list[str], successors: list[list[int]]) -> list[int]:
    """A class number per node: equal for nodes that behave alike from there on.

    Partition refinement. Nodes start in classes by the labels met following first edges
    from them (every node has the same first edge wherever it was copied to), so straight
    code needs no round per instruction; classes are then split by their successors'
    classes until nothing splits.
    """
    count = len(labels)
    interned: dict[object, int] = {}
    first_run: list[int] = [-1] * count
    for start in range(count):
        path: list[int] = []
        on_path: set[int] = set()
        node = start
        while first_run[node] < 0 and successors[node] and node not in on_path:
            path.append(node)
            on_path.add(node)
            node = successors[node][0]
        if node in on_path:  # first edges loop: the loop's nodes start by their labels
            loop = path[path.index(node) :]
            for member in loop:
                first_run[member] = interned.setdefault(("loop", labels[member]), len(interned))
            del path[len(path) - len(loop) :]
        elif first_run[node] < 0:  # no successor
            first_run[node] = interned.setdefault(("end", labels[node]), len(interned))
        for member in reversed(path):
            key = (labels[member], len(successors[member]), first_run[successors[member][0]])
            first_run[member] = interned.setdefault(key, len(interned))
    classes, number = first_run, len(set(first_run))
    while True:
        signatures: dict[tuple[int, tuple[int, ...]], int] = {}
        refined = [
            signatures.setdefault(
                (classes[node], tuple(classes[s] for s in successors[node])), len(signatures)
            )
            for node in range(count)
        ]
        if len(signatures) == number:
            return refined
        classes, number = refined, len(signatures)


def _numbered(
    entry: int, labels: list[str], successors: list[list[int]], classes: list[int]
) -> str:
    """The merged graph, classes numbered in depth-first order from ``entry``."""
    order: dict[int, int] = {}
    representative: list[int] = []
    stack = [entry]
    while stack:
        node = stack.pop()
        if classes[node] in order:
            continue
        order[classes[node]] = len(representative)
        representative.append(node)
        stack.extend(reversed(successors[node]))
    return "".join(
        f"{labels[node]}>{','.join(str(order[classes[s]]) for s in successors[node])}\n"
        for node in representative
    )
