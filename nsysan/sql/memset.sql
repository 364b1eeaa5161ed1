-- CUDA memsets, with the memory kind labelled from the export's ENUM table.
SELECT
    m.start AS start_ns, m."end" AS end_ns, m."end" - m.start AS duration_ns,
    m.globalPid AS global_pid, m.deviceId AS device_id, m.contextId AS context_id, m.streamId AS stream_id,
    m.correlationId AS correlation_id, m.bytes, m.value,
    coalesce(kind.label, kind.name, CAST(m.memKind AS VARCHAR)) AS mem_kind
FROM raw.CUPTI_ACTIVITY_KIND_MEMSET AS m
LEFT JOIN raw.ENUM_CUDA_MEM_KIND AS kind ON kind.id = m.memKind
