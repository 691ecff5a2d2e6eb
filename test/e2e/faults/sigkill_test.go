package faults

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/iptproxy/iptproxy/pkg/rules"
	fw "github.com/iptproxy/iptproxy/test/e2e/framework"
)

// bulkServices is how many Services the interrupted restore writes.
const bulkServices = 3000

// snapshot is what one iptables-save of the nat table showed.
type snapshot struct {
	at       time.Duration
	services int      // KUBE-SVC-* chains packets can reach
	dangling []string // reachable jumps to chains that are not declared, or empty Service chains
	err      error
}

// inspectNAT counts the Service chains that packets can reach in an
// iptables-save dump of nat (walking the jumps from the built-in chains)
// and lists reachable jumps to undeclared chains and reachable Service
// chains without rules. Reachability is what "old set or new set" means
// for packets: a large sync is split into transactions that write new
// chains before anything jumps to them (make-before-break), so a dump may
// show new chains that nothing references yet; they are invisible to
// traffic until the transaction that switches the jumps commits.
func inspectNAT(save string) (services int, dangling []string) {
	declared := map[string]bool{}
	jumps := map[string][]string{}
	ruleCount := map[string]int{}
	for _, l := range strings.Split(save, "\n") {
		if strings.HasPrefix(l, ":") {
			name, _, _ := strings.Cut(l[1:], " ")
			declared[name] = true
			continue
		}
		if !strings.HasPrefix(l, "-A ") {
			continue
		}
		f := strings.Fields(l)
		ruleCount[f[1]]++
		for i := 2; i+1 < len(f); i++ {
			if f[i] == "-j" || f[i] == "-g" {
				if t := f[i+1]; strings.HasPrefix(t, "KUBE-") {
					jumps[f[1]] = append(jumps[f[1]], t)
				}
			}
		}
	}
	seen := map[string]bool{}
	queue := []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}
	for len(queue) > 0 {
		c := queue[0]
		queue = queue[1:]
		if seen[c] {
			continue
		}
		seen[c] = true
		if strings.HasPrefix(c, rules.PrefixServiceCluster) && !rules.IsDispatchChain(c) {
			services++
			if ruleCount[c] == 0 {
				dangling = append(dangling, c+" (empty)")
			}
		}
		for _, t := range jumps[c] {
			if !declared[t] {
				dangling = append(dangling, t)
				continue
			}
			queue = append(queue, t)
		}
	}
	return services, dangling
}

// restoreRunning reports whether an iptables-restore runs in the node's
// namespace.
func restoreRunning(ctx context.Context, n *fw.Node) bool {
	pids, err := n.PIDs(ctx)
	if err != nil {
		return false
	}
	for _, pid := range pids {
		cmd, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if err == nil && strings.Contains(string(cmd), "restore") {
			return true
		}
	}
	return false
}

// TestSIGKILLDuringLargeRestore stops iptproxy, creates 3,000 Services,
// starts it again and SIGKILLs it (with its iptables-restore) in the middle
// of the restore that writes them, while another loop dumps the nat table
// as fast as it can. Every dump must hold either the old set of Services
// or the new one, with every jump target present; the restarted daemon
// must converge and serve.
func TestSIGKILLDuringLargeRestore(t *testing.T) {
	w := newWorld(t, worldOptions{})
	oldSave := w.n.IPTablesSave(t, v1.IPv4Protocol, "nat")
	oldCount, dangling := inspectNAT(oldSave)
	if len(dangling) > 0 || oldCount == 0 {
		t.Fatalf("unexpected starting nat table: %d services, dangling %v", oldCount, dangling)
	}
	w.d.Stop(t)

	start := time.Now()
	createBulk(t, w)
	t.Logf("created %d Services with endpoints in %v", bulkServices, time.Since(start).Round(time.Second))
	newCount := oldCount + bulkServices

	// Dump nat continuously from before the restart until convergence.
	ctx, cancel := context.WithCancel(t.Context())
	var mu sync.Mutex
	var snaps []snapshot
	var wg sync.WaitGroup
	wg.Add(1)
	began := time.Now()
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			out, err := w.n.Run(ctx, "iptables-save", "-t", "nat")
			if ctx.Err() != nil {
				return
			}
			s := snapshot{at: time.Since(began), err: err}
			if err == nil {
				s.services, s.dangling = inspectNAT(out)
			}
			mu.Lock()
			snaps = append(snaps, s)
			mu.Unlock()
		}
	}()

	w.d.Start(t)
	deadline := time.Now().Add(2 * time.Minute)
	for !restoreRunning(t.Context(), w.n) {
		if time.Now().After(deadline) || !w.d.Running() {
			cancel()
			t.Fatalf("never saw iptproxy's iptables-restore running (daemon running: %v)", w.d.Running())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Into the restore a little, then SIGKILL (the process group: the
	// iptables-restore child dies too).
	time.Sleep(100 * time.Millisecond)
	w.d.Kill(t)
	killedAt := time.Since(began)
	afterKill := w.n.IPTablesSave(t, v1.IPv4Protocol, "nat")
	killedCount, killedDangling := inspectNAT(afterKill)
	t.Logf("killed %v after the restart; nat then held %d Service chains (old %d, new %d)",
		killedAt.Round(time.Millisecond), killedCount, oldCount, newCount)
	if len(killedDangling) > 0 || (killedCount != oldCount && killedCount != newCount) {
		t.Errorf("after SIGKILL nat is half written: %d Service chains (old %d, new %d), dangling jumps %v",
			killedCount, oldCount, newCount, first(killedDangling, 5))
	}

	// Restart: it converges.
	w.d.Start(t)
	w.d.WaitHealthy(t, 3*time.Minute)
	converged := time.Since(began)
	last := fw.NewService("default", fmt.Sprintf("bulk-%d", bulkServices-1))
	lastSvc, err := w.c.Client().CoreV1().Services(last.Namespace).Get(t.Context(), last.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w.pods[0].WaitForBackends(t, v1.ProtocolTCP, fw.ServiceAddr(lastSvc, v1.IPv4Protocol, 80), []string{w.pods[1].Name()}, converge)
	w.waitServing(t, w.podNames(), converge)
	for _, l := range strings.Split(w.d.Log(), "\n") {
		if strings.Contains(l, `"Synced rules"`) && strings.Contains(l, `ipFamily="IPv4"`) && strings.Contains(l, "full=true") {
			t.Logf("restarted daemon's first sync: %s", l[strings.Index(l, `"Synced rules"`):])
			break
		}
	}
	// Keep dumping until a few dumps have seen the new set.
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		mu.Lock()
		seenNew := 0
		for _, s := range snaps {
			if s.err == nil && s.services == newCount {
				seenNew++
			}
		}
		mu.Unlock()
		if seenNew >= 3 {
			break
		}
	}
	cancel()
	wg.Wait()

	final, finalDangling := inspectNAT(w.n.IPTablesSave(t, v1.IPv4Protocol, "nat"))
	if final != newCount || len(finalDangling) > 0 {
		t.Errorf("after the restart nat holds %d Service chains (want %d), dangling %v", final, newCount, first(finalDangling, 5))
	}
	counts := map[int]int{}
	var failed []error
	for _, s := range snaps {
		if s.err != nil {
			failed = append(failed, s.err)
			continue
		}
		counts[s.services]++
		if len(s.dangling) > 0 || (s.services != oldCount && s.services != newCount) {
			t.Errorf("dump at %v is half written: %d reachable Service chains (old %d, new %d), dangling jumps %v",
				s.at.Round(time.Millisecond), s.services, oldCount, newCount, first(s.dangling, 5))
		}
	}
	t.Logf("%d nat dumps over %v (converged %v after the first start): Service chain counts seen %v",
		len(snaps), converged.Round(time.Millisecond), converged.Round(time.Millisecond), counts)
	if len(failed) > 0 {
		t.Logf("%d dumps failed, first: %v", len(failed), failed[0])
	}
	if counts[oldCount] == 0 || counts[newCount] == 0 {
		t.Errorf("the dumps did not see both the old and the new set: %v", counts)
	}
}

func first(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// createBulk creates bulkServices ClusterIP Services bulk-<i>, each with
// pod-b as its one endpoint, with a few workers.
func createBulk(t *testing.T, w *world) {
	t.Helper()
	client := w.c.Client()
	jobs := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := createOne(t.Context(), client, w, i); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for i := range bulkServices {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("creating Services: %v", err)
	default:
	}
}

func createOne(ctx context.Context, client kubernetes.Interface, w *world, i int) error {
	svc := fw.NewService("default", fmt.Sprintf("bulk-%d", i), fw.ServicePort("tcp", v1.ProtocolTCP, 80, echoPort))
	svc, err := client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	slice, err := fw.NewEndpointSlice(svc, v1.IPv4Protocol, w.pods[1].Backend())
	if err != nil {
		return err
	}
	_, err = client.DiscoveryV1().EndpointSlices(svc.Namespace).Create(ctx, slice, metav1.CreateOptions{})
	return err
}
