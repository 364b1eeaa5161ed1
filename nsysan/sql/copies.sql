-- Every memory copy (and memset) with the CUDA API call that launched it, for nsysan bandwidth.
-- direction / src_kind / dst_kind come from the export's own ENUM tables (see memcpy.sql); a memset has
-- direction 'Memset', no source and its memory kind as dst_kind. src_device_id / dst_device_id name the GPUs
-- at either end: the export's own (peer-to-peer copies), else the copy's device for a device-memory end. The launching call is matched by
-- correlationId within the same process (as for GPU projection); api is NULL when the export has no
-- CUDA API trace.
WITH ops AS (
    SELECT 'memcpy' AS op, start_ns, end_ns, duration_ns, bytes, direction, src_kind, dst_kind,
           device_id, stream_id,
           coalesce(src_device_id, CASE WHEN src_kind = 'Device' THEN device_id END) AS src_device_id,
           coalesce(dst_device_id, CASE WHEN dst_kind = 'Device' THEN device_id END) AS dst_device_id,
           global_pid, correlation_id
    FROM memcpy
    UNION ALL
    SELECT 'memset', start_ns, end_ns, duration_ns, bytes, 'Memset', CAST(NULL AS VARCHAR), mem_kind,
           device_id, stream_id, CAST(NULL AS BIGINT), device_id, global_pid, correlation_id
    FROM memset
),
calls AS (
    SELECT r.globalTid & -16777216 AS global_pid, r.correlationId AS correlation_id,
           arg_min(s.value, r.start) AS api, arg_min(r.globalTid, r.start) AS global_tid
    FROM raw.CUPTI_ACTIVITY_KIND_RUNTIME AS r
    LEFT JOIN raw.StringIds AS s ON s.id = r.nameId
    GROUP BY ALL
)
SELECT o.*, c.api, c.global_tid
FROM ops AS o
LEFT JOIN calls AS c ON c.global_pid = o.global_pid AND c.correlation_id = o.correlation_id
