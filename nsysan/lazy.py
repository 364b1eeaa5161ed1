"""numpy and duckdb, imported at the first use of one of their names rather than when nsysan is imported.

A command whose reports are all in the analysis cache queries no export and runs no numpy code; importing
the two took ~0.2 s of such a run's ~1 s, most of which is imports. So the modules on that path write
``from nsysan.lazy import numpy as np`` (or ``duckdb``): ``np.sort`` then imports numpy on first use and is a
plain attribute afterwards. Type checkers see the real modules.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any


class LazyModule(ModuleType):
    """Stands for the module ``name`` and imports it when one of its attributes is first read."""

    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(self.__name__), attr)
        setattr(self, attr, value)  # read as a plain attribute from now on
        return value


if TYPE_CHECKING:
    import duckdb
    import numpy
else:
    numpy = LazyModule("numpy")
    duckdb = LazyModule("duckdb")
