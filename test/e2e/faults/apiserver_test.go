package faults

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	fw "github.com/iptproxy/iptproxy/test/e2e/framework"
)

// apiserverDown is how long the apiserver stays away.
const apiserverDown = 60 * time.Second

// TestAPIServerOutage stops kube-apiserver (etcd stays) for a minute.
// While it is away the rules stay and traffic flows; the daemon keeps
// running. A change made right after it comes back is applied, and the
// reconnect rewrites nothing else: the rules of an unrelated Service keep
// their packet counters (a rewritten chain starts again from zero) and no
// full sync happens.
func TestAPIServerOutage(t *testing.T) {
	w := newWorld(t, worldOptions{})
	podA, podB := w.pods[0], w.pods[1]
	steady := fw.NewService("default", "steady", fw.ServicePort("tcp", v1.ProtocolTCP, 80, echoPort))
	steady = w.c.CreateService(t, steady)
	w.c.SetEndpoints(t, steady, podA.Backend(), podB.Backend())
	steadyAddr := fw.ServiceAddr(steady, v1.IPv4Protocol, 80)
	podA.WaitForBackends(t, v1.ProtocolTCP, steadyAddr, w.podNames(), converge)
	countersBefore := w.packets(t, "default/steady")
	if countersBefore == 0 {
		t.Fatalf("no packets counted in the rules of default/steady")
	}
	fullBefore := fullSyncs(w.d.Log())
	sepB := w.sepChain(t, podB)

	w.c.StopAPIServer(t)
	stopped := time.Now()
	for time.Since(stopped) < apiserverDown {
		if err := w.served(t.Context()); err != nil {
			t.Fatalf("traffic broke %v into the apiserver outage: %v", time.Since(stopped).Round(time.Second), err)
		}
		if !w.d.Running() {
			t.Fatalf("daemon exited during the apiserver outage: %v\n%s", w.d.Process().Err(), tail(w.d.Log()))
		}
		time.Sleep(500 * time.Millisecond)
	}
	w.c.StartAPIServer(t)
	restarted := time.Now()

	// Right after the restart: pod-b leaves "web", a Service "after"
	// appears.
	w.c.SetEndpoints(t, w.svc, podA.Backend())
	after := fw.NewService("default", "after", fw.ServicePort("tcp", v1.ProtocolTCP, 80, echoPort))
	after = w.c.CreateService(t, after)
	w.c.SetEndpoints(t, after, podB.Backend())
	afterAddr := fw.ServiceAddr(after, v1.IPv4Protocol, 80)
	// client-go's reflectors back off up to a minute (with jitter) while
	// the apiserver is away, as kube-proxy's do.
	podA.WaitForBackends(t, v1.ProtocolTCP, afterAddr, []string{podB.Name()}, 2*time.Minute)
	// The slice informer's relist delivers "after" before "web" (key
	// order), so the web change may land a sync later.
	fw.Eventually(t, converge, func(context.Context) error {
		if strings.Contains(w.n.IPTablesSave(t, v1.IPv4Protocol, "nat"), ":"+sepB+" ") {
			return fmt.Errorf("chain %s of the removed endpoint is still there", sepB)
		}
		return nil
	})
	t.Logf("change applied %v after the apiserver came back", time.Since(restarted).Round(100*time.Millisecond))
	w.waitServing(t, []string{podA.Name()}, converge)

	// Two more sync periods: nothing else gets rewritten.
	time.Sleep(2 * syncPeriod)
	if got := w.packets(t, "default/steady"); got < countersBefore {
		t.Errorf("rules of the unchanged Service default/steady were rewritten on reconnect: %d packets counted, %d before", got, countersBefore)
	}
	if n := fullSyncs(w.d.Log()); n != fullBefore {
		t.Errorf("%d full syncs after the reconnect, want none", n-fullBefore)
	}
}

// packets sums the packet counters of the rules in a Service's own nat
// chains (KUBE-SVC-*, KUBE-SEP-*) whose comment names it (e.g.
// "default/steady"). Shared chains such as KUBE-SERVICES are left out: they
// are rightly rewritten when another Service comes or goes.
func (w *world) packets(t *testing.T, comment string) int {
	t.Helper()
	out := w.n.Exec(t, "iptables-save", "-c", "-t", "nat")
	total := 0
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, "[") || !strings.Contains(l, comment) ||
			!(strings.Contains(l, "] -A KUBE-SVC-") || strings.Contains(l, "] -A KUBE-SEP-")) {
			continue
		}
		// [packets:bytes] -A CHAIN ...
		end := strings.IndexByte(l, ']')
		if end < 0 {
			continue
		}
		p, _, _ := strings.Cut(l[1:end], ":")
		n, err := strconv.Atoi(p)
		if err == nil {
			total += n
		}
	}
	return total
}
