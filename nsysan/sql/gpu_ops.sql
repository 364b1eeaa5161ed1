-- Every GPU operation (kernel, memcpy, memset) with the process that launched it and its correlation id.
SELECT 'kernel' AS kind, start AS start_ns, "end" AS end_ns, globalPid AS global_pid, correlationId AS correlation_id,
       deviceId AS device_id, streamId AS stream_id
FROM raw.CUPTI_ACTIVITY_KIND_KERNEL
UNION ALL
SELECT 'memcpy', start, "end", globalPid, correlationId, deviceId, streamId FROM raw.CUPTI_ACTIVITY_KIND_MEMCPY
UNION ALL
SELECT 'memset', start, "end", globalPid, correlationId, deviceId, streamId FROM raw.CUPTI_ACTIVITY_KIND_MEMSET
