"""Print what an export holds of NCCL's NVTX payloads."""
import sqlite3
import sys

con = sqlite3.connect(sys.argv[1])
tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'NVTX%'")]
print("tables:", tables)
cols = [r[1] for r in con.execute("PRAGMA table_info(NVTX_EVENTS)")]
print("NVTX_EVENTS columns:", cols)
q = ("SELECT e.eventType, coalesce(s.value, e.text), e.domainId, e.uint64Value, e.int64Value, e.uint32Value, "
     "e.jsonTextId, e.jsonText, typeof(e.binaryData), length(e.binaryData), hex(e.binaryData), e.category "
     "FROM NVTX_EVENTS e LEFT JOIN StringIds s ON s.id = e.textId ORDER BY e.start LIMIT 40")
for row in con.execute(q):
    print(row)
for t in tables:
    if t != "NVTX_EVENTS":
        print("==", t)
        for row in con.execute(f'SELECT * FROM "{t}" LIMIT 30'):
            print(row)
json_ids = con.execute("SELECT DISTINCT jsonTextId FROM NVTX_EVENTS WHERE jsonTextId IS NOT NULL LIMIT 5").fetchall()
for (jid,) in json_ids:
    print("json", jid, con.execute("SELECT value FROM StringIds WHERE id=?", (jid,)).fetchone())
