-- Export metadata as key/value pairs (either table name nsys has used), plus the capture's start time.
SELECT name AS key, value FROM raw.META_DATA_EXPORT
UNION ALL
SELECT name, value FROM raw.EXPORT_META_DATA
UNION ALL
SELECT 'SESSION_START_UTC_NS', CAST(utcEpochNs AS VARCHAR) FROM raw.TARGET_INFO_SESSION_START_TIME
