"""The SQL nsysan runs, one named file per query, so that it can be read and tested on its own."""
from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def query(name: str) -> str:
    """The text of ``nsysan/sql/<name>.sql``."""
    return resources.files(__package__).joinpath(f"{name}.sql").read_text()
