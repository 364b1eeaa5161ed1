-- CUDA runtime and driver API calls, with their names.
SELECT
    r.start AS start_ns, r."end" AS end_ns, r."end" - r.start AS duration_ns,
    r.globalTid AS global_tid, (r.globalTid >> 24) & 16777215 AS pid, r.globalTid & 16777215 AS tid,
    r.correlationId AS correlation_id, s.value AS name, r.returnValue AS return_value
FROM raw.CUPTI_ACTIVITY_KIND_RUNTIME AS r
LEFT JOIN raw.StringIds AS s ON s.id = r.nameId
