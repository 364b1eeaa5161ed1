-- GPU work of each NVTX range: a GPU op belongs to a range when the CUDA API call that launched it
-- (matched by correlationId within the same process) lies inside the range on the same thread, and it
-- counts for every enclosing range. Inputs registered by nsysan.analyses.latency:
--   range_nest(range_id, global_tid, start_ns, end_ns, crossing)  same-thread ranges
--   range_ancestors(range_id, ancestor_id)                        ancestor-or-self pairs
-- Instead of an inequality join (quadratic per thread), each launch finds the latest range that started
-- on its thread at or before it (ASOF join), and climbs that range's ancestors; nested ranges that contain
-- the launch are exactly those ancestors. Ranges that partially overlap another range (start/end ranges
-- only) are not reachable that way and are matched directly.
WITH launches AS (
    SELECT r.globalTid AS global_tid, r.start AS call_start, r."end" AS call_end,
           op.correlation_id, op.start_ns AS op_start, op.end_ns AS op_end
    FROM gpu_ops AS op
    JOIN raw.CUPTI_ACTIVITY_KIND_RUNTIME AS r
      ON r.correlationId = op.correlation_id AND (r.globalTid & -16777216) = op.global_pid
),
innermost_by_start AS (
    -- Of ranges starting at the same instant on a thread, the innermost; its ancestors hold the others.
    SELECT range_id, global_tid, start_ns
    FROM range_nest
    QUALIFY row_number() OVER (PARTITION BY global_tid, start_ns ORDER BY end_ns, range_id DESC) = 1
),
latest AS (
    SELECT l.*, s.range_id AS latest_range_id
    FROM launches AS l
    ASOF JOIN innermost_by_start AS s ON s.global_tid = l.global_tid AND l.call_start >= s.start_ns
),
pairs AS (
    SELECT a.ancestor_id AS range_id, l.correlation_id, l.op_start, l.op_end
    FROM latest AS l
    JOIN range_ancestors AS a ON a.range_id = l.latest_range_id
    JOIN range_nest AS n ON n.range_id = a.ancestor_id
    WHERE NOT n.crossing AND n.start_ns <= l.call_start AND n.end_ns >= l.call_end
    UNION ALL
    SELECT n.range_id, l.correlation_id, l.op_start, l.op_end
    FROM launches AS l
    JOIN range_nest AS n
      ON n.crossing AND n.global_tid = l.global_tid AND n.start_ns <= l.call_start AND n.end_ns >= l.call_end
),
coverage AS (
    -- For the union of op intervals: how far earlier ops (in start order) already covered.
    SELECT range_id, correlation_id, op_start, op_end,
           max(op_end) OVER (PARTITION BY range_id ORDER BY op_start, op_end
                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS covered_until
    FROM pairs
)
SELECT
    range_id,
    min(op_start) AS gpu_proj_start_ns,
    max(op_end) - min(op_start) AS gpu_proj_ns,
    sum(greatest(0, op_end - greatest(op_start, coalesce(covered_until, op_start))))::BIGINT AS gpu_busy_ns,
    count(DISTINCT correlation_id) AS gpu_ops
FROM coverage
GROUP BY range_id
