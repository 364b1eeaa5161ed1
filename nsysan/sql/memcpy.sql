-- CUDA memory copies; direction and memory kinds are labelled from the export's own ENUM tables
-- (nsys's memory-kind numbering is its own, not CUPTI's).
SELECT
    m.start AS start_ns, m."end" AS end_ns, m."end" - m.start AS duration_ns,
    m.globalPid AS global_pid, m.deviceId AS device_id, m.contextId AS context_id, m.streamId AS stream_id,
    m.correlationId AS correlation_id, m.bytes,
    coalesce(op.label, op.name, CAST(m.copyKind AS VARCHAR)) AS direction,
    coalesce(src.label, src.name, CAST(m.srcKind AS VARCHAR)) AS src_kind,
    coalesce(dst.label, dst.name, CAST(m.dstKind AS VARCHAR)) AS dst_kind,
    m.srcDeviceId AS src_device_id, m.dstDeviceId AS dst_device_id
FROM raw.CUPTI_ACTIVITY_KIND_MEMCPY AS m
LEFT JOIN raw.ENUM_CUDA_MEMCPY_OPER AS op ON op.id = m.copyKind
LEFT JOIN raw.ENUM_CUDA_MEM_KIND AS src ON src.id = m.srcKind
LEFT JOIN raw.ENUM_CUDA_MEM_KIND AS dst ON dst.id = m.dstKind
