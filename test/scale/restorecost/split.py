#!/usr/bin/env python3
"""Builds the payloads for the restore-cost measurement from iptproxy's
render (ipt.rules): the nat table in iptproxy's layout (dispatch tree) and in
kube-proxy's (linear KUBE-SERVICES), and splits each into --noflush
transactions of about N lines made of whole chains (declarations with their
rules), leaves first (SEP, then SVC, then dispatch, then the roots)."""
import sys, os
lines = open('ipt.rules').read().split('\n')
i = lines.index('*nat')
decl, rules, order = {}, {}, []
for l in lines[i+1:]:
    if l.startswith(':'):
        name = l[1:].split()[0]; decl[name] = l; rules[name] = []; order.append(name)
    elif l.startswith('-A '):
        rules[l.split()[1]].append(l)
def is_dsp(c): return c.startswith('KUBE-SVC-DSP-')
def target(r):
    w = r.split(); return w[w.index('-j')+1] if '-j' in w else ''
layouts = {}
layouts['iptproxy'] = (order, rules)
# kube-proxy: no dispatch chains; KUBE-SERVICES lists every Service rule.
kr = {c: list(rs) for c, rs in rules.items() if not is_dsp(c)}
leaf = [r.replace('-A '+r.split()[1]+' ', '-A KUBE-SERVICES ', 1) for c in order if is_dsp(c) for r in rules[c] if not is_dsp(target(r))]
svc = [r for r in rules['KUBE-SERVICES'] if not is_dsp(target(r))]
kr['KUBE-SERVICES'] = leaf + svc  # the nodeports rule stays last
layouts['kube-proxy'] = ([c for c in order if not is_dsp(c)], kr)
def rank(c):
    if c in ('KUBE-MARK-MASQ', 'KUBE-POSTROUTING', 'KUBE-NODEPORTS'): return -1
    if c == 'KUBE-SERVICES': return 4
    if c.startswith('KUBE-SEP-'): return 0
    if is_dsp(c): return 2
    if c.startswith('KUBE-SVC-') or c.startswith('KUBE-EXT-'): return 1
    return 3
def heights(rs):
    hs = {}
    def hgt(c):
        if c not in hs:
            kids = [target(r) for r in rs.get(c, []) if is_dsp(target(r))]
            hs[c] = 1 + max((hgt(k) for k in kids), default=0)
        return hs[c]
    return hgt
for name, (ord_, rs) in layouts.items():
    hgt = heights(rs)
    # Dispatch chains after the chains they jump to: leaves first.
    chains = sorted(ord_, key=lambda c: (rank(c), hgt(c) if is_dsp(c) else 0))
    with open(f'{name}.full', 'w') as f:
        f.write('*nat\n' + '\n'.join(decl[c] for c in chains) + '\n')
        for c in chains: f.write(''.join(r + '\n' for r in rs[c]))
        f.write('COMMIT\n')
    total = sum(1 + len(rs[c]) for c in chains)
    print(name, 'chains', len(chains), 'lines', total)
    for n in (2000, 8000, 32000):
        d = f'{name}-{n}'; os.makedirs(d, exist_ok=True)
        k, cur, cnt = 0, [], 0
        def flush():
            global k
            with open(f'{d}/{k:04d}', 'w') as f:
                f.write('*nat\n' + '\n'.join(decl[c] for c in cur) + '\n')
                for c in cur: f.write(''.join(r + '\n' for r in rs[c]))
                f.write('COMMIT\n')
            k += 1
        for c in chains:
            # A chain bigger than a transaction (kube-proxy's KUBE-SERVICES)
            # goes alone.
            if cur and cnt + 1 + len(rs[c]) > n:
                flush(); cur, cnt = [], 0
            cur.append(c); cnt += 1 + len(rs[c])
        if cur: flush()
        print(' ', d, k, 'transactions')
