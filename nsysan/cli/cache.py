"""``nsysan cache info`` and ``nsysan cache clear``: the analysis cache (:mod:`nsysan.cache`)."""
from __future__ import annotations

import json
from typing import Annotated

import typer

from nsysan.cli.options import user_errors

app = typer.Typer()
cache_app = typer.Typer(no_args_is_help=True, help="The analysis cache: where it is, how big, and emptying it. "
                        "Analyses keep what each report contributes there and read it back while the export, "
                        "its sidecar and nsysan are unchanged; --no-cache (or NSYSAN_NO_CACHE=1) bypasses it.\n\n"
                        "Example: nsysan cache info")
app.add_typer(cache_app, name="cache")

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@cache_app.command("info")
def info(as_json: Json = False) -> None:
    """Where the cache is (NSYSAN_CACHE_DIR), whether it is on, its entries and size, and its bound
    (NSYSAN_CACHE_MAX_MB)."""
    from nsysan import cache

    with user_errors():
        now = cache.info()
    if as_json:
        typer.echo(json.dumps(now))
        return
    state = "on" if now["enabled"] else "off (NSYSAN_NO_CACHE)"
    typer.echo(f"{now['directory']}: {now['entries']} entries, {now['size_mb']:.1f} of {now['max_mb']:.0f} MB; "
               f"cache {state}")


@cache_app.command("clear")
def clear(as_json: Json = False) -> None:
    """Remove every entry (the next analysis of each report reads its export again)."""
    from nsysan import cache

    with user_errors():
        gone = cache.clear()
    if as_json:
        typer.echo(json.dumps(gone))
        return
    typer.echo(f"{gone['directory']}: removed {gone['removed']} entries ({gone['size_mb']:.1f} MB)")
