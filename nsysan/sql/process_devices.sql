-- Every process with NVTX ranges or GPU ops, and the CUDA device most of its ops ran on (NULL: none).
WITH activity AS (
    SELECT (global_tid >> 24) & 16777215 AS pid, NULL::BIGINT AS device_id FROM nvtx_ranges
    UNION ALL
    SELECT (global_pid >> 24) & 16777215, device_id FROM gpu_ops
)
SELECT pid, mode(device_id) AS device_id FROM activity GROUP BY pid ORDER BY pid
