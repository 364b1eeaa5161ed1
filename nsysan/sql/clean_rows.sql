-- The rows of one nsys table that analyses read: damaged rows left out and, of rows written twice, the first
-- kept (template of nsysan.quality; same {problem} as row_problems.sql; {dedupe} is empty when no row is
-- written twice, else a QUALIFY clause keeping the first row of each key).
SELECT * EXCLUDE (_problem)
FROM (SELECT t.*, {problem} AS _problem FROM source."{table}" AS t) AS t
WHERE _problem IS NULL
{dedupe}
