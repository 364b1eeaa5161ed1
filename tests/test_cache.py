"""The analysis cache: keys that change whenever the export, its sidecar, the step's options or nsysan's code
change; atomic, size-bounded entries; damaged entries rebuilt; and every analysis giving the same result warm as
cold without reading the export again."""
from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import polars as pl
import pytest

from nsysan import cache
from nsysan.selection import Selection


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """The cache on, in a folder of this test's own."""
    folder = tmp_path / "cache"
    monkeypatch.setattr(cache, "_configured", {"enabled": True, "directory": folder})
    return folder


def step(report, *, select=Selection(), limit=3):  # a stand-in per-report step, named like nsysan's
    return pl.DataFrame({"x": [1, 2]})


step.__module__ = "nsysan.tests_stand_in"


def test_a_step_is_named_by_its_function_and_every_option():
    same = cache.step_name(functools.partial(step, select=Selection(), limit=3))
    assert cache.step_name(functools.partial(step, limit=3, select=Selection())) == same
    assert cache.step_name(functools.partial(step, select=Selection(skip_first=1), limit=3)) != same
    assert cache.step_name(functools.partial(step, select=Selection(), limit=4)) != same
    assert cache.step_name(functools.partial(step, limit=(3,))) != cache.step_name(functools.partial(step, limit=[3]))
    with pytest.raises(cache.Unnamed):
        cache.step_name(lambda report: None)
    with pytest.raises(cache.Unnamed):
        cache.step_name(functools.partial(step, limit=object()))
    with pytest.raises(cache.Unnamed):  # a function outside nsysan may change without nsysan's fingerprint
        cache.step_name(shutil.copy)


def test_the_key_follows_the_export_its_sidecar_and_the_code(tmp_path, monkeypatch):
    export = tmp_path / "run.sqlite"
    export.write_bytes(b"x" * 100)
    first = cache.key(export, functools.partial(step))
    assert cache.key(export, functools.partial(step)) == first
    assert cache.key(export, functools.partial(step, limit=4)) != first

    os.utime(export, ns=(0, export.stat().st_mtime_ns + 1))  # re-exported: same size, newer
    touched = cache.key(export, functools.partial(step))
    assert touched != first

    sidecar = tmp_path / "run.meta.json"
    sidecar.write_text('{"ranks": [0, 1]}')
    with_sidecar = cache.key(export, functools.partial(step))
    sidecar.write_text('{"ranks": [1, 0]}')
    assert len({touched, with_sidecar, cache.key(export, functools.partial(step))}) == 3

    now = cache.key(export, functools.partial(step))
    monkeypatch.setattr(cache, "code_fingerprint", lambda: "other code")
    changed = cache.key(export, functools.partial(step))
    monkeypatch.undo()
    assert changed != now == cache.key(export, functools.partial(step))

    assert cache.key(export, lambda report: None) is None


def test_parquetdir_identity_covers_every_table_file(tmp_path):
    folder = tmp_path / "run_pqtdir"
    folder.mkdir()
    (folder / "NVTX_EVENTS.parquet").write_bytes(b"a")
    before = cache.export_identity(folder)
    (folder / "StringIds.parquet").write_bytes(b"b")
    assert cache.export_identity(folder) != before


def test_entries_round_trip_frames_and_notes(cache_dir):
    frame = pl.DataFrame({"range": ["a", "b"], "ns": [1, 2**40], "ms": [0.5, None],
                          "kind": pl.Series(["x", "y"], dtype=pl.Categorical),
                          "ids": [[1, 2], []]})
    assert cache.lookup("ab" + "0" * 62) is None
    cache.store("ab" + "0" * 62, frame, ["one note", "two"])
    got, notes = cache.lookup("ab" + "0" * 62)
    assert got.equals(frame) and got.schema == frame.schema
    assert notes == ["one note", "two"]
    empty = pl.DataFrame(schema={"a": pl.Int64, "b": pl.String})
    cache.store("cd" + "0" * 62, empty, [])
    got, _ = cache.lookup("cd" + "0" * 62)
    assert got.is_empty() and got.schema == empty.schema
    assert not list(cache_dir.rglob("*.tmp"))


def test_a_damaged_entry_is_removed_and_never_trusted(cache_dir):
    key = "ef" + "1" * 62
    cache.store(key, pl.DataFrame({"x": [1]}), [])
    (entry,) = cache_dir.rglob("*.parquet")
    entry.write_bytes(entry.read_bytes()[:40])  # cut short, as a full disk or a kill leaves a file
    assert cache.lookup(key) is None
    assert not entry.exists()


def test_the_folder_is_kept_under_its_bound_least_recently_used_first(cache_dir, monkeypatch):
    frame = pl.DataFrame({"x": list(range(20_000))})
    keys = [f"{i:02d}" + "2" * 62 for i in range(4)]
    for i, key in enumerate(keys):
        cache.store(key, frame, [])
        entry = next(cache_dir.glob(f"??/{key}.parquet"))
        os.utime(entry, ns=(10**18 + i, 10**18 + i))
    cache.lookup(keys[0])  # used now: the newest
    size = next(cache_dir.glob("??/*.parquet")).stat().st_size
    monkeypatch.setitem(cache._configured, "max_mb", (2.5 * size) / 2**20)
    assert cache.prune() == 2
    left = {p.stem for p in cache_dir.rglob("*.parquet")}
    assert left == {keys[0], keys[3]}
    assert cache.info()["entries"] == 2
    assert cache.clear()["removed"] == 2 and cache.info()["entries"] == 0


def test_unwritable_cache_folder_is_not_an_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(cache, "_configured", {"enabled": True, "directory": blocker / "cache"})
    cache.store("aa" + "3" * 62, pl.DataFrame({"x": [1]}), [])
    assert cache.lookup("aa" + "3" * 62) is None


def test_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setattr(cache, "_configured", {})
    monkeypatch.setenv("NSYSAN_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("NSYSAN_CACHE_MAX_MB", "3")
    monkeypatch.setenv("NSYSAN_NO_CACHE", "0")
    now = cache.settings()
    assert now == cache.Settings(True, tmp_path / "c", 3 * 2**20)
    monkeypatch.setenv("NSYSAN_NO_CACHE", "1")
    assert not cache.settings().enabled
    with cache.disabled():
        assert not cache.settings().enabled
    monkeypatch.delenv("NSYSAN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.settings().directory == Path(tmp_path / "xdg" / "nsysan" / "analysis")


def test_cache_info_and_clear_commands(cache_dir):
    import json

    from typer.testing import CliRunner

    from nsysan.cli import app

    cache.store("ab" + "4" * 62, pl.DataFrame({"x": [1]}), [])
    shown = json.loads(CliRunner().invoke(app, ["cache", "info", "--json"]).stdout)
    assert shown["directory"] == str(cache_dir) and shown["entries"] == 1 and shown["enabled"]
    text = CliRunner().invoke(app, ["cache", "clear"])
    assert text.exit_code == 0 and "removed 1 entries" in text.stdout
    assert not list(cache_dir.rglob("*.parquet"))


# -- the cache under every analysis ------------------------------------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    """Copies of the samples and the distributed capture (the test touches and edits them) and one broken file."""
    import nsysan

    folder = tmp_path_factory.mktemp("corpus")
    paths = []
    for source in [*nsysan.sample_paths()[:3], FIXTURES / "h200x2" / "ddp_resnet18_2gpu.sqlite"]:
        shutil.copy(source, folder / source.name)
        paths.append(folder / source.name)
    (folder / "broken.sqlite").write_text("not an export")
    return [*paths, folder / "broken.sqlite"]


def _same(a, b) -> None:
    assert a.frame.equals(b.frame), (a.frame, b.frame)
    assert a.frame.schema == b.frame.schema
    assert a.notes == b.notes and a.analysed == b.analysed
    assert [f.reason for f in a.failures] == [f.reason for f in b.failures]


@pytest.mark.parametrize("name", ["latency", "latency_trace", "kernels", "bandwidth", "copy_sizes", "utilization",
                                  "top_kernels", "throughput", "comm", "skew", "collective_calls", "timeline", "info"])
def test_every_analysis_reads_the_same_warm_as_cold_without_opening_an_export(name, corpus, cache_dir, monkeypatch):
    import nsysan
    from nsysan import engine

    analysis = nsysan.ANALYSES[name]
    with cache.disabled():
        reference = analysis(corpus)
    cold = analysis(corpus)
    _same(reference, cold)
    assert cold.failures  # the broken file, whose failure is not cached: one entry per report analysed
    assert len(list(cache_dir.rglob("*.parquet"))) == cold.analysed

    def no_export(*args, **kwargs):
        raise AssertionError("a warm call opened an export")

    healthy = [p for p in corpus if p not in {f.path for f in cold.failures}]  # failures are not cached
    with cache.disabled():
        expected = analysis(healthy)
    monkeypatch.setattr(engine, "_analyse", no_export)
    _same(expected, analysis(healthy))


def test_a_changed_export_or_sidecar_is_read_again(corpus, cache_dir):
    import nsysan

    sample = corpus[0]
    first = nsysan.latency(sample)
    (entry,) = cache_dir.rglob("*.parquet")
    os.utime(sample, ns=(sample.stat().st_atime_ns, sample.stat().st_mtime_ns + 10**9))  # as a re-export does
    again = nsysan.latency(sample)
    _same(first, again)
    assert len(list(cache_dir.rglob("*.parquet"))) == 2 and entry.exists()

    sidecar = sample.with_name(sample.name.removesuffix(".sqlite") + ".meta.json")
    original = sidecar.read_text() if sidecar.exists() else None
    try:
        sidecar.write_text('{"batch_size": 7}')
        relabelled = nsysan.throughput(sample)
        assert relabelled.frame["batch_size"].to_list() == [7]
    finally:
        sidecar.unlink() if original is None else sidecar.write_text(original)


def test_a_damaged_entry_is_rebuilt_with_the_same_numbers(corpus, cache_dir):
    import nsysan

    first = nsysan.kernels(corpus[1])
    (entry,) = cache_dir.rglob("*.parquet")
    entry.write_bytes(b"PAR1 damaged")
    _same(first, nsysan.kernels(corpus[1]))
    assert entry.stat().st_size > 100  # written whole again


def test_a_stack_of_reports_is_one_entry_that_follows_each_report(corpus, cache_dir, monkeypatch):
    """A call on several reports stores their stacked frame too, and a later call on the same reports reads that
    one entry; a changed export, or a damaged stack entry, sends the call back to the reports' own entries."""
    import nsysan

    samples = corpus[:3]
    with cache.disabled():
        expected = nsysan.latency(samples, by=["model"])
    cold = nsysan.latency(samples, by=["model"])
    _same(expected, cold)
    entries = set(cache_dir.rglob("*.parquet"))
    assert len(entries) == len(samples) + 1

    read = []
    real_lookup = cache.lookup
    monkeypatch.setattr(cache, "lookup", lambda key: read.append(key) or real_lookup(key))
    _same(expected, nsysan.latency(samples, by=["model"]))
    assert len(read) == 1  # the stack alone
    (stack,) = [e for e in entries if e.stem == read[0]]

    stack.write_bytes(b"PAR1 damaged")
    read.clear()
    _same(expected, nsysan.latency(samples, by=["model"]))
    assert len(read) == 1 + len(samples) and stack.stat().st_size > 100  # rebuilt from the reports' entries

    os.utime(samples[1], ns=(samples[1].stat().st_atime_ns, samples[1].stat().st_mtime_ns + 10**9))
    read.clear()
    _same(expected, nsysan.latency(samples, by=["model"]))
    assert len(read) == 1 + len(samples) and stack.stem not in read[1:]  # a new stack key, then each report
    assert len(set(cache_dir.rglob("*.parquet"))) == len(entries) + 2  # the re-read report and the new stack

    with cache.disabled():
        one_fewer = nsysan.latency(samples[:2], by=["model"])
    _same(one_fewer, nsysan.latency(samples[:2], by=["model"]))  # another stack, not the three reports' one


def test_a_stack_too_large_for_the_cache_is_not_stored(corpus, cache_dir, monkeypatch):
    import nsysan
    from nsysan import engine

    samples = corpus[:3]
    with cache.disabled():
        trace = nsysan.latency_trace(samples).frame
    # A bound whose share is half the stack's size, and which the reports' compressed entries fit far under.
    monkeypatch.setitem(cache._configured, "max_mb", trace.estimated_size() * engine.STACK_SHARE / 2 / 2**20)
    nsysan.latency_trace(samples)
    entries = list(cache_dir.rglob("*.parquet"))
    assert len(entries) == len(samples) and sum(e.stat().st_size for e in entries) < trace.estimated_size()
    monkeypatch.setitem(cache._configured, "max_mb", cache.DEFAULT_MAX_MB)
    nsysan.latency_trace(samples)
    assert len(list(cache_dir.rglob("*.parquet"))) == len(samples) + 1


def test_no_cache_on_the_command_line_neither_reads_nor_writes(corpus, cache_dir, monkeypatch):
    from typer.testing import CliRunner

    from nsysan.cli import app

    monkeypatch.setattr(cache, "_configured", {"directory": cache_dir})
    monkeypatch.setenv("NSYSAN_NO_CACHE", "0")
    ran = CliRunner().invoke(app, ["latency", "--no-cache", "-f", "csv", str(corpus[0])])
    assert ran.exit_code == 0, ran.output
    assert not list(cache_dir.rglob("*.parquet"))
    cached = CliRunner().invoke(app, ["latency", "-f", "csv", str(corpus[0])])
    assert cached.stdout == ran.stdout and len(list(cache_dir.rglob("*.parquet"))) == 1


def test_a_full_disk_while_writing_an_entry_is_not_an_error(cache_dir, monkeypatch):
    def full(self, *args, **kwargs):
        raise pl.exceptions.ComputeError("No space left on device (os error 28)")  # what polars raises there

    monkeypatch.setattr(pl.DataFrame, "write_parquet", full)
    cache.store("ab" + "4" * 62, pl.DataFrame({"x": [1]}), [])
    assert cache.lookup("ab" + "4" * 62) is None and not list(cache_dir.rglob("*.tmp"))


def test_reports_held_open_are_not_stored(cache_dir):
    """An open report carries the notes of every analysis run on it so far: stored, they would come back with
    analyses (read by path later) that never read what they are about."""
    import nsysan

    path = nsysan.sample_paths()[0]
    with nsysan.open(path) as report:
        assert nsysan.latency(report).ok
    assert not list(cache_dir.rglob("*.parquet"))
    assert nsysan.latency(path).ok
    assert len(list(cache_dir.rglob("*.parquet"))) == 1
