-- NVTX ranges, one row each, named as nsys names them: "domain:message" for ranges in a named domain.
-- A range that never ended ends at the last NVTX timestamp of the capture, as in nsys's own reports.
-- nsys ties a range to its domain through the domain-create event (type 75) of the same process.
WITH ranges AS (
    SELECT * FROM raw.NVTX_EVENTS WHERE eventType IN (59, 60, 70, 71)
),
capture_end AS (
    SELECT max(greatest(start, coalesce("end", start))) AS ts FROM ranges
),
domains AS (
    SELECT domainId AS domain_id, globalTid & 281474959933440 AS pid_bits, arg_min(text, start) AS domain
    FROM raw.NVTX_EVENTS
    WHERE eventType = 75
    GROUP BY ALL
)
SELECT
    r._row AS range_id,
    CASE WHEN d.domain IS NULL THEN coalesce(s.value, r.text)
         ELSE d.domain || ':' || coalesce(s.value, r.text) END AS name,
    d.domain AS domain,
    CASE WHEN r.eventType IN (59, 70) THEN 'PushPop' ELSE 'StartEnd' END AS style,
    r.start AS start_ns,
    coalesce(r."end", (SELECT ts FROM capture_end)) AS end_ns,
    r."end" IS NULL AS unended,
    r.globalTid AS global_tid,
    r.endGlobalTid AS end_global_tid,
    -- nsys projects only ranges whose end was recorded on the thread that started them.
    r.endGlobalTid IS NULL AS same_thread,
    (r.globalTid >> 24) & 16777215 AS pid,
    r.globalTid & 16777215 AS tid
FROM ranges AS r
LEFT JOIN domains AS d ON d.domain_id = r.domainId AND d.pid_bits = (r.globalTid & 281474959933440)
LEFT JOIN raw.StringIds AS s ON s.id = r.textId
