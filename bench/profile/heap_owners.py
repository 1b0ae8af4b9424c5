#!/usr/bin/env python3
import sys,collections,re
# Buckets heaptrack's leaked/peak stacks (heaptrack_print -t 0 -F ... --flamegraph-cost-type leaked) by owner.
rules=[
 ('metrics /metrics render (one scrape in flight)', r'fedid::serve::http::metrics|Metrics::render|fn render'),
 ('reflector store: FederatedIdentity', r'apply_watcher_event<fedid_core::crd::identity::FederatedIdentity>'),
 ('reflector store: Secret (labelled fedid.dev/identity)', r'apply_watcher_event<k8s_openapi::[^>]*secret::Secret>'),
 ('reflector store: other (Namespace, Pod, ConfigMap, IdentityIssuer)', r'apply_watcher_event<'),
 ('watch/list decode buffers, in flight', r'serde_json|from_slice|deserialize'),
 ('controller scheduler (DelayQueue + HashMap of pending requeues)', r'kube_runtime::scheduler|delay_queue'),
 ('predicate_filter hash cache', r'predicate::PredicateFilter<.*poll_next|predicate.rs'),
 ('prometheus-client Families (per-identity series)', r'prometheus_client::metrics::family|Family<'),
 ('fedid recent-status / identity state', r'fedid::identity'),
 ('tokio runtime / hyper / TLS', r'tokio::|hyper::|rustls|aws_lc'),
]
rows=[]
for line in open(sys.argv[1]):
    stack,_,n=line.rstrip('\n').rpartition(' ')
    rows.append((stack,int(n)))
tot=sum(n for _,n in rows)
by=collections.Counter(); other=collections.Counter()
for stack,n in rows:
    frames=stack.split(';')
    for name,pat in rules:
        if name.startswith('predicate'):
            # only when the allocation itself is made inside the predicate filter (leaf side)
            if any('predicate.rs' in f for f in frames[-12:]): by[name]+=n; break
            continue
        if re.search(pat,stack): by[name]+=n; break
    else:
        by['other']+=n; other[';'.join(f[:80] for f in frames[-6:])]+=n
print(f"total live heap {tot/2**20:.1f} MiB")
for k,v in by.most_common(): print(f"{v/2**20:7.2f} MiB {100*v/tot:5.1f}%  {k}")
if '-v' in sys.argv:
    for k,v in other.most_common(15): print(f"   other {v/2**20:.2f} MiB  {k}")
