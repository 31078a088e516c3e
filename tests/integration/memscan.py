#!/usr/bin/env python3
"""memscan.py PID SECRET: count the copies of SECRET in the writable memory of process
PID (heap, anonymous mappings, stacks; read through /proc/PID/mem, as root or the
process's owner). Prints the count and where; exits 0 when there is none. Bounded:
only mappings with resident pages, each at most 512 MiB, skipping the sanitizer's
shadow and allocator reservations, which are huge and mostly untouched."""
import re, sys

pid, secret = int(sys.argv[1]), sys.argv[2].encode()
maps, rss = [], {}
cur = None
for line in open("/proc/%d/smaps" % pid):
    m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$", line)
    if m:
        cur = (int(m.group(1), 16), int(m.group(2), 16), m.group(3), m.group(4).strip())
        maps.append(cur)
    elif cur is not None and line.startswith("Rss:"):
        rss[cur] = int(line.split()[1])
found = []
with open("/proc/%d/mem" % pid, "rb", 0) as mem:
    for m in maps:
        lo, hi, perms, name = m
        if "w" not in perms or rss.get(m, 0) == 0 or hi - lo > 512 << 20:
            continue
        chunk = 1 << 20
        for off in range(lo, hi, chunk):
            try:
                mem.seek(off)
                data = mem.read(min(chunk + len(secret), hi - off))
            except OSError:
                continue
            i = data.find(secret)
            while 0 <= i < chunk:
                found.append("%x %s" % (off + i, name or "[anon]"))
                i = data.find(secret, i + 1)
print("%d cop%s of the secret" % (len(found), "y" if len(found) == 1 else "ies"))
for f in found[:10]:
    print("  at", f)
sys.exit(1 if found else 0)
