"""A pickle reader for the CIFAR-10/100 batch files that can build nothing but what they contain.

The official batches are Python 2 pickles of a dict of str, bytes, int, lists and one uint8 numpy
array. `pickle.load` would build *any* object a file names (a `__reduce__` payload runs code), so a
planted `data_batch_1` would be a program. `load_cifar_pickle` admits only the globals the array
needs (numpy's `_reconstruct`, `ndarray`, `dtype`; `_codecs.encode` with latin-1, which Python 3's
protocol-2 pickles use for bytes) and refuses everything else before it is built.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any

import numpy as np

try:  # numpy >= 2 moved the implementation; the official files name numpy.core (numpy 1's path)
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct


class RefusedPickle(pickle.UnpicklingError):
    """The file names a global outside the allow-list."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 writes bytes at protocol 2 as _codecs.encode(text, "latin1"); nothing else is needed.
    if codecs.lookup(encoding).name != "iso8859-1":
        raise RefusedPickle(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin-1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # the official files (numpy 1 era)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # the same function pickled by numpy >= 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedPickle(f"it names {module}.{name}, which a CIFAR batch never contains") from None

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle("it uses persistent ids, which a CIFAR batch never contains")


def load_cifar_pickle(blob: bytes) -> dict[str, Any]:
    """The batch dict of a CIFAR file's bytes. Raises `pickle.UnpicklingError` (a `RefusedPickle`
    for a forbidden global) or ValueError for anything that is not a batch of that shape."""
    obj = _CifarUnpickler(io.BytesIO(blob), encoding="latin1").load()
    if not isinstance(obj, dict):
        raise ValueError(f"expected a dict, found {type(obj).__name__}")
    for value in obj.values():  # only the one image array may be an array, and only of uint8
        if isinstance(value, np.ndarray) and value.dtype != np.uint8:
            raise ValueError(f"an array of {value.dtype}, not uint8")
    return obj
