-- Every GPU op with the CUDA API call that launched it: same correlationId, same process
-- (the op's globalPid is the process part of the call's globalTid). An op without such a call is kept with
-- NULL call columns, for nsysan.quality to count and leave out (every op of a sound export has its call).
SELECT op.correlation_id, r.globalTid AS global_tid, r.start AS call_start, r."end" AS call_end,
       op.start_ns AS op_start, op.end_ns AS op_end
FROM gpu_ops AS op
LEFT JOIN raw.CUPTI_ACTIVITY_KIND_RUNTIME AS r
  ON r.correlationId = op.correlation_id AND (r.globalTid & -16777216) = op.global_pid
