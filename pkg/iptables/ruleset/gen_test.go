package ruleset

import (
	"fmt"
	"strings"
)

// genKubeProxyPayload renders a kube-proxy-shaped restore payload with n
// Services of three endpoints each (about 15 lines per Service).
func genKubeProxyPayload(n int) []byte {
	var b strings.Builder
	b.WriteString("*filter\n:KUBE-SERVICES - [0:0]\n:KUBE-FORWARD - [0:0]\n")
	b.WriteString("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n")
	b.WriteString("COMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-NODEPORTS - [0:0]\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, ":KUBE-SVC-%016d - [0:0]\n", i)
		for e := 0; e < 3; e++ {
			fmt.Fprintf(&b, ":KUBE-SEP-%015d%d - [0:0]\n", i, e)
		}
	}
	b.WriteString("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n")
	b.WriteString("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n")
	b.WriteString("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n")
	b.WriteString("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n")
	for i := 0; i < n; i++ {
		ip := fmt.Sprintf("172.30.%d.%d", i/250, i%250+1)
		fmt.Fprintf(&b, "-A KUBE-SERVICES -m comment --comment \"ns%d/svc%d:p80 cluster IP\" -m tcp -p tcp -d %s --dport 80 -j KUBE-SVC-%016d\n", i, i, ip, i)
		fmt.Fprintf(&b, "-A KUBE-SVC-%016d -m comment --comment \"ns%d/svc%d:p80 cluster IP\" -m tcp -p tcp -d %s --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ\n", i, i, i, ip)
		for e := 0; e < 3; e++ {
			ep := fmt.Sprintf("10.%d.%d.%d", e+1, i/250, i%250+1)
			prob := ""
			switch e {
			case 0:
				prob = "-m statistic --mode random --probability 0.3333333333 "
			case 1:
				prob = "-m statistic --mode random --probability 0.5000000000 "
			}
			fmt.Fprintf(&b, "-A KUBE-SVC-%016d -m comment --comment \"ns%d/svc%d:p80 -> %s:80\" %s-j KUBE-SEP-%015d%d\n", i, i, i, ep, prob, i, e)
			fmt.Fprintf(&b, "-A KUBE-SEP-%015d%d -m comment --comment ns%d/svc%d:p80 -s %s -j KUBE-MARK-MASQ\n", i, e, i, i, ep)
			fmt.Fprintf(&b, "-A KUBE-SEP-%015d%d -m comment --comment ns%d/svc%d:p80 -m tcp -p tcp -j DNAT --to-destination %s:80\n", i, e, i, i, ep)
		}
	}
	b.WriteString("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n")
	b.WriteString("COMMIT\n")
	return []byte(b.String())
}
