#!/usr/bin/env python3
import sys,re,collections
# Buckets `perf script -F tid,ip,sym,dso` samples: kernel samples by the syscall they run under,
# user samples by their leaf frame's crate; plus inclusive shares of key components.
def samples(path):
    cur=[]
    for line in open(path, errors='replace'):
        if not line.strip():
            if cur: yield cur
            cur=[]; continue
        if line[0] in ' \t':
            parts=line.strip().split(' ',1)
            cur.append(parts[1] if len(parts)>1 else '?')
    if cur: yield cur
SYS=re.compile(r'__(?:x64|do)_sys_(\w+)|^(do_writev|do_readv|ksys_write|ksys_read|__sys_recvfrom|__sys_sendto|do_epoll_wait|do_futex|__sys_sendmsg|__sys_recvmsg|__sys_accept4)\b')
def user_bucket(frame):
    f=frame
    for name,pat in [('rustls (TLS records)','rustls'),('aws-lc (AES-GCM etc.)','aws_lc|aes_|gcm_|sha'),('hyper/h1 (parse, encode)','hyper'),
                     ('h2','h2::'),('axum/tower routing','axum|tower'),('http (HeaderMap)','http::'),('fedid handler','fedid::serve|fedid::issuer'),
                     ('tokio runtime/IO','tokio|mio'),('bytes','bytes::'),('libc malloc/free','malloc|_int_free|free|cfree|_int_malloc|realloc|tcache'),
                     ('libc memcpy/memmove','memmove|memcpy|memset'),('libc other','libc'),('core/alloc (fmt, etc.)','core::|alloc::|fmt')]:
        if re.search(pat,f): return name
    return 'other user: '+f[:60]
tot=0; by=collections.Counter(); incl=collections.Counter()
for st in samples(sys.argv[1]):
    tot+=1
    kernel=[f for f in st if '[kernel.kallsyms]' in f]
    user=[f for f in st if '[kernel.kallsyms]' not in f]
    if st and '[kernel.kallsyms]' in st[0]:
        sc=None
        for f in kernel:
            m=SYS.search(f.split(' (')[0])
            if m: sc=m.group(1) or m.group(2)
        # the outermost (last matched) syscall-ish frame
        by['kernel: '+(sc or 'no syscall (irq, softirq, scheduler)')]+=1
    else:
        by['user: '+user_bucket(st[0])]+=1
    joined=' '.join(st)
    for name,pat in [('any frame in rustls','rustls'),('any frame in hyper','hyper'),('in fedid::serve::http (handler)','fedid::serve::http'),
                     ('in malloc/free','malloc|_int_free|cfree'),('futex (thread wake/park)','futex'),('epoll_wait','epoll_wait'),
                     ('schedule (context switch)','__schedule|finish_task_switch')]:
        if re.search(pat,joined): incl[name]+=1
print(f"samples {tot}")
for k,v in by.most_common(25): print(f"{100*v/tot:5.1f}%  {k}")
print('inclusive:')
for k,v in incl.most_common(): print(f"{100*v/tot:5.1f}%  {k}")
