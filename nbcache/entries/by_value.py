"""Which objects cloudpickle pickles by value: code that only the writer's Python can load.

cloudpickle pickles a function or class *by reference* (its module and name, imported again
when loading) when it can be found under that name in an importable module, and *by value*
otherwise: functions and classes defined in a notebook, lambdas, nested functions, and
anything in a module registered with ``cloudpickle.register_pickle_by_value``. A value
pickled by value carries code objects, whose bytecode only the Python minor version that
wrote it can run (another one may refuse them or crash on them). Everything else in a pickle
(numbers, text, containers, arrays, frames, instances of importable classes) loads under any
Python version that has the same libraries.
"""

from __future__ import annotations

import types

__all__ = ["is_code_by_value"]

# Py_TPFLAGS_HEAPTYPE: set for classes made at run time (a ``class`` statement), clear for
# types defined in C (``NoneType``, ``types.FunctionType``), which cloudpickle pickles as
# references to built-in types.
_HEAP_TYPE = 1 << 9


def is_code_by_value(obj: object, reduction: object) -> bool:
    """Whether ``obj`` goes into the pickle as code by value.

    ``reduction`` is what cloudpickle's ``Pickler.reducer_override`` returned for ``obj``
    (which pickle calls for every object but ``None``, booleans, numbers, text, bytes and
    plain containers): ``NotImplemented`` for functions and classes pickled by reference and
    for everything it leaves to the usual reductions. Code objects are always pickled by
    value (by cloudpickle's reducer for them).
    """
    if isinstance(obj, types.CodeType):
        return True
    if reduction is NotImplemented:
        return False
    if isinstance(obj, types.FunctionType):
        return True
    return isinstance(obj, type) and bool(obj.__flags__ & _HEAP_TYPE)
