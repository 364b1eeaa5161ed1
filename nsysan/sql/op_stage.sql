-- The innermost NVTX range that launched each GPU op (one row per launching call, keyed by process and
-- correlation id). Same rule as range_projection.sql: an op belongs to a range when the CUDA API call that
-- launched it lies inside the range on the same thread; of the ranges it belongs to, the innermost is the
-- deepest (highest level; for crossing start/end ranges, the latest-starting). Inputs registered by
-- nsysan.analyses.bandwidth:
--   stage_nest(range_id, global_tid, start_ns, end_ns, crossing, level)  same-thread ranges
--   stage_ancestors(range_id, ancestor_id)                              ancestor-or-self pairs
WITH launches AS (
    SELECT DISTINCT r.globalTid AS global_tid, r.start AS call_start, r."end" AS call_end,
           op.global_pid, op.correlation_id
    FROM (SELECT DISTINCT global_pid, correlation_id FROM gpu_ops) AS op
    JOIN raw.CUPTI_ACTIVITY_KIND_RUNTIME AS r
      ON r.correlationId = op.correlation_id AND (r.globalTid & -16777216) = op.global_pid
),
innermost_by_start AS (
    SELECT range_id, global_tid, start_ns
    FROM stage_nest
    QUALIFY row_number() OVER (PARTITION BY global_tid, start_ns ORDER BY end_ns, range_id DESC) = 1
),
latest AS (
    SELECT l.*, s.range_id AS latest_range_id
    FROM launches AS l
    ASOF JOIN innermost_by_start AS s ON s.global_tid = l.global_tid AND l.call_start >= s.start_ns
),
candidates AS (
    SELECT l.global_pid, l.correlation_id, n.range_id, n.level, n.start_ns
    FROM latest AS l
    JOIN stage_ancestors AS a ON a.range_id = l.latest_range_id
    JOIN stage_nest AS n ON n.range_id = a.ancestor_id
    WHERE NOT n.crossing AND n.start_ns <= l.call_start AND n.end_ns >= l.call_end
    UNION ALL
    SELECT l.global_pid, l.correlation_id, n.range_id, n.level, n.start_ns
    FROM launches AS l
    JOIN stage_nest AS n
      ON n.crossing AND n.global_tid = l.global_tid AND n.start_ns <= l.call_start AND n.end_ns >= l.call_end
)
SELECT global_pid, correlation_id, range_id AS stage_range_id
FROM candidates
QUALIFY row_number() OVER (PARTITION BY global_pid, correlation_id
                           ORDER BY level DESC, start_ns DESC, range_id DESC) = 1
