-- How many rows of one nsys table are damaged, by reason, and how many are written twice (template of
-- nsysan.quality: {table} is read before any row of it is left out, {problem} names a row's damage or is NULL, {key}
-- is the row's identity for duplicates (a hash of its columns), {unended} marks NVTX ranges that never ended,
-- {ranges} NVTX range events, {null_columns} counts the NULLs of each never-NULL column, and {names} joins
-- StringIds to count the sound rows whose name it lacks ({unnamed}).
WITH checked AS (
    SELECT t.*, {problem} AS _problem FROM raw."{table}" AS t
)
SELECT count(*) AS total,
       count(*) FILTER (WHERE _problem = 'null') AS null_values,
       count(*) FILTER (WHERE _problem = 'reversed') AS reversed,
       count(*) FILTER (WHERE _problem = 'outside') AS outside,
       count(*) FILTER (WHERE _problem = 'size') AS impossible_sizes,
       count(*) FILTER (WHERE _problem IS NULL) - count(DISTINCT {key}) FILTER (WHERE _problem IS NULL) AS duplicated,
       count(*) FILTER (WHERE _problem IS NULL AND {unended}) AS unended,
       count(*) FILTER (WHERE {ranges}) AS ranges{unnamed}{null_columns}
FROM checked AS t{names}
