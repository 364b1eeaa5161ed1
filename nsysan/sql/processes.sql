SELECT globalPid AS global_pid, pid, name FROM raw.PROCESSES
