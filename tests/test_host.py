"""nsysan.host: commands stopped with every descendant (timeouts, cancels, SIGTERM), their messages, and the
machine discovery the runner and ``nsysan doctor`` share (fake nvidia-smi; sysfs fakes are in test_doctor.py)."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from nsysan import host

#: Like nsys, the child starts its program in a session of its own.
CHILD = ("import subprocess, sys, time; "
         "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True); "
         "print(p.pid, flush=True); time.sleep(120)")


def _grandchild(log: Path) -> int:
    for line in log.read_text().splitlines():
        if line.strip().isdigit():
            return int(line)
    raise AssertionError(log.read_text())


def _gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while host.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not host.alive(pid)


def test_timeout_stops_the_whole_tree(tmp_path):
    log = tmp_path / "run.log"
    outcome = host.run([sys.executable, "-c", CHILD], log=log, timeout=1.5, grace=2.0)
    assert outcome.timed_out and not outcome.cancelled and outcome.seconds < 15
    assert log.read_text().startswith(f"$ {sys.executable} -c ")  # the command heads its log
    assert _gone(_grandchild(log))


def test_timeout_kills_a_process_group_too(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    start = time.monotonic()
    done = host.run(["/bin/sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout=0.5)
    assert done.timed_out and not done.cancelled
    assert time.monotonic() - start < 10
    assert _gone(int(pidfile.read_text())), "the sleep started by the command outlived the timeout"


def test_sigterm_stops_the_run_and_interrupts(tmp_path):
    log = tmp_path / "run.log"
    with pytest.raises(host.Interrupted), host.terminations_interrupt():
        threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        host.run([sys.executable, "-c", CHILD], log=log, timeout=60)
    assert _gone(_grandchild(log))
    assert issubclass(host.Interrupted, KeyboardInterrupt)  # handled wherever Ctrl-C is


def test_cancel_output_and_signals(tmp_path: Path) -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    done = host.run(["/bin/sh", "-c", "echo started; sleep 60"], cancel=cancel)
    assert done.cancelled and done.stdout == "started\n" and done.seconds < 10
    ok = host.run([sys.executable, "-c", "import sys; print('out'); print('Exportation error: bad.', file=sys.stderr); "
                   "sys.exit(4)"])
    assert (ok.returncode, ok.stdout, ok.message()) == (4, "out\n", "bad")
    killed = host.run(["/bin/sh", "-c", "kill -9 $$"])
    assert killed.killed_by == "SIGKILL"


def test_last_message_skips_progress_lines_and_words_inside_paths() -> None:
    output = ("Processing 4261 events: [1%    ]\rProcessing 4261 events: [100%]\n"
              "Exportation error: Cannot read from stream.\n")
    assert host.last_message(output) == "Cannot read from stream"
    assert host.last_message("Generated:\n    /tmp/a.sqlite\n") == "/tmp/a.sqlite"
    output = "ERROR: importer crashed\nSaved the log to /tmp/error_logs/failed_runs/x.log\n"
    assert host.last_message(output) == "importer crashed"
    assert host.last_message("Generated:\n    /data/errors/run.nsys-rep\n") == "/data/errors/run.nsys-rep"


def test_write_atomic_replaces_and_follows_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    old = os.umask(0o027)
    try:
        host.write_atomic(target, b"one")
        host.write_atomic(target, b"two")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"two" and target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_gpus_from_nvidia_smi_and_cuda_visible_devices(tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, NVIDIA H100, 00000000:1B:00.0, GPU-aaa, 580.1, 81559 MiB'\n"
                   "echo '1, NVIDIA H100, 00000000:9B:00.0, GPU-bbb, 580.1, 81559 MiB'\n")
    smi.chmod(0o755)
    environ = {"PATH": str(tmp_path)}
    gpus, source = host.list_gpus(environ=environ, sysfs=tmp_path / "nosys")
    assert [(g.index, g.bus_id, g.uuid, g.driver, g.numa_node) for g in gpus] == [
        (0, "0000:1b:00.0", "GPU-aaa", "580.1", None), (1, "0000:9b:00.0", "GPU-bbb", "580.1", None)]
    gpus, source = host.list_gpus(environ={**environ, "CUDA_VISIBLE_DEVICES": "1"})
    assert [(g.index, g.uuid) for g in gpus] == [(0, "GPU-bbb")] and "CUDA_VISIBLE_DEVICES" in source
    gpus, source = host.list_gpus(environ={**environ, "CUDA_VISIBLE_DEVICES": "GPU-aaa,7,1"})
    assert [g.uuid for g in gpus] == ["GPU-aaa"]  # CUDA stops at the first invalid entry
    assert host.list_gpus(environ={"PATH": str(tmp_path / "none")}, ask_torch=False) == (
        None, "none (nvidia-smi not found)")


def test_lists_and_bus_ids() -> None:
    assert host.parse_list("0-2,5") == [0, 1, 2, 5]
    assert host.parse_list("") == []
    assert host.sysfs_bus_id("00000000:1B:00.0") == "0000:1b:00.0"
    assert host.sysfs_bus_id("0000:00:06.0") == "0000:00:06.0"
    assert host.sysfs_bus_id("00000001:C3:00.0") == "0001:c3:00.0"
