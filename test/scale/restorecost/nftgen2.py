#!/usr/bin/env python3
"""kube-proxy v1.37 nftables mode's first-sync transaction for N ClusterIP
Services x M endpoints: the table skeleton (sets, maps, base chains) is
taken from the listing of a real kube-proxy table (kpnft-1k.list, written
by kube-proxy v1.37.2 in make bench at 1000x10) with its elements and
Service chains removed; then, per Service, what knftables sends: add chain,
flush chain, the DNAT rule through a numgen map, one cluster-ips and one
service-ips element."""
import sys, hashlib, base64, re
N, M = int(sys.argv[1]), int(sys.argv[2])
src = open('kpnft-1k.list').read().split('\n')
out, skip_chain, skip_elems = [], False, False
for l in src:
    if re.match(r'\tchain service-[A-Z0-9]{8}-bench/', l):
        skip_chain = True; continue
    if skip_chain:
        if l == '\t}': skip_chain = False
        continue
    if 'elements = {' in l:
        skip_elems = not l.rstrip().endswith('}'); continue
    if skip_elems:
        if l.rstrip().endswith('}'): skip_elems = False
        continue
    out.append(l)
T = 'ip kube-proxy'
def h(name): return base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()[:8] + '-' + name
def addr(i):
    v=(10<<24|64<<16) + (i//254)*256 + i%254 + 1
    return "%d.%d.%d.%d"%(v>>24,(v>>16)&255,(v>>8)&255,v&255)
def cip(i):
    v=(198<<24|19<<16) + 10 + i
    return "%d.%d.%d.%d"%(v>>24,(v>>16)&255,(v>>8)&255,v&255)
for i in range(N):
    svc = 'service-' + h(f'bench/svc-{i:05d}/tcp/http')
    m = ', '.join(f'{j} : {addr(i*M+j)} . 8080' for j in range(M))
    out.append(f'add chain {T} {svc}')
    out.append(f'flush chain {T} {svc}')
    out.append(f'add rule {T} {svc} meta l4proto tcp dnat ip to numgen random mod {M} map {{ {m} }}')
    out.append(f'add element {T} cluster-ips {{ {cip(i)} }}')
    out.append(f'add element {T} service-ips {{ {cip(i)} . tcp . 80 : goto {svc} }}')
print('\n'.join(out))
