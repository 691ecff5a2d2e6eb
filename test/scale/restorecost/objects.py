#!/usr/bin/env python3
"""N ClusterIP Services with M endpoints each (one EndpointSlice), as the
benchmark lays them out, as multi-document YAML on stdout."""
import sys
N, M = int(sys.argv[1]), int(sys.argv[2])
def addr(i):
    v = (10 << 24 | 64 << 16) + (i // 254) * 256 + i % 254 + 1
    return "%d.%d.%d.%d" % (v >> 24, (v >> 16) & 255, (v >> 8) & 255, v & 255)
def cip(i):
    v = (198 << 24 | 19 << 16) + 10 + i
    return "%d.%d.%d.%d" % (v >> 24, (v >> 16) & 255, (v >> 8) & 255, v & 255)
out = sys.stdout
for i in range(N):
    name = "svc-%05d" % i
    out.write(f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: bench, uid: u{i}}}
spec:
  type: ClusterIP
  clusterIP: {cip(i)}
  clusterIPs: [{cip(i)}]
  ipFamilies: [IPv4]
  ports: [{{name: http, protocol: TCP, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-ipv4
  namespace: bench
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, protocol: TCP, port: 8080}}]
endpoints:
""")
    for j in range(M):
        out.write(f"- addresses: [{addr(i*M+j)}]\n  conditions: {{ready: true}}\n")
