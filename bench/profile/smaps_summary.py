#!/usr/bin/env python3
import sys,re
# Summarise a /proc/PID/smaps: anonymous mappings by size class (glibc arenas are 64 MiB-aligned reservations), file-backed, [heap]
cur=None; out=[]
for line in open(sys.argv[1]):
    m=re.match(r'^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$',line)
    if m:
        cur={'size':(int(m[2],16)-int(m[1],16))//1024,'perm':m[3],'name':m[4].strip(),'rss':0}; out.append(cur)
    elif line.startswith('Rss:'): cur['rss']=int(line.split()[1])
anon=[o for o in out if o['name']=='' ]; heap=[o for o in out if o['name']=='[heap]']
files=[o for o in out if o['name'].startswith('/')]
print('[heap] (main arena, brk) rss KiB', sum(o['rss'] for o in heap))
big=[o for o in anon if o['rss']>512]
print('anonymous mappings with >512 KiB resident:')
for o in sorted(big,key=lambda o:-o['rss']): print(f"  size {o['size']} KiB rss {o['rss']} KiB {o['perm']}")
print('anonymous total rss KiB', sum(o['rss'] for o in anon), 'files rss KiB', sum(o['rss'] for o in files))
