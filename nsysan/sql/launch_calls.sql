-- Successful CUDA calls that start GPU work of one kind ({pattern}: a LIKE pattern on the API name), for
-- telling a capture without that work from an export that lost its table.
SELECT count(*)
FROM raw.CUPTI_ACTIVITY_KIND_RUNTIME AS r
JOIN (SELECT id FROM raw.StringIds WHERE {pattern}) AS s ON s.id = r.nameId
WHERE coalesce(r.returnValue, 0) = 0
