-- Named threads, with the process they belong to.
SELECT t.globalTid AS global_tid, (t.globalTid >> 24) & 16777215 AS pid, t.globalTid & 16777215 AS tid,
       s.value AS thread_name, p.name AS process_name
FROM raw.ThreadNames AS t
LEFT JOIN raw.StringIds AS s ON s.id = t.nameId
LEFT JOIN raw.PROCESSES AS p ON p.globalPid = (t.globalTid & -16777216)
