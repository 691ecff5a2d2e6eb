package scale

import (
	"errors"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	tests := []struct {
		name string
		xs   []float64
		p    float64
		want float64
	}{
		{"empty", nil, 50, math.NaN()},
		{"one", []float64{7}, 99, 7},
		{"median odd, unsorted", []float64{5, 1, 3}, 50, 3},
		{"median even interpolates", []float64{4, 1, 2, 3}, 50, 2.5},
		{"p0 is min", []float64{9, 2, 5}, 0, 2},
		{"p100 is max", []float64{9, 2, 5}, 100, 9},
		{"p99 of 1..101", seq(1, 101), 99, 100},
		{"out of range clamps", []float64{1, 2}, 150, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := slices.Clone(tt.xs)
			got := Percentile(tt.xs, tt.p)
			if math.IsNaN(tt.want) != math.IsNaN(got) || (!math.IsNaN(got) && math.Abs(got-tt.want) > 1e-9) {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tt.xs, tt.p, got, tt.want)
			}
			if !slices.Equal(in, tt.xs) {
				t.Errorf("Percentile modified its input: %v", tt.xs)
			}
		})
	}
	if got := DurationPercentile([]time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond}, 50); got != 2*time.Millisecond {
		t.Errorf("DurationPercentile median = %v, want 2ms", got)
	}
	if got := DurationPercentile(nil, 50); got != 0 {
		t.Errorf("DurationPercentile(nil) = %v, want 0", got)
	}
}

func seq(from, to int) []float64 {
	var out []float64
	for i := from; i <= to; i++ {
		out = append(out, float64(i))
	}
	return out
}

func TestValueAndRatio(t *testing.T) {
	tests := []struct {
		name      string
		ipt, kp   Value
		iptString string
		kpString  string
		ratio     string
	}{
		{"durations", Duration(250 * time.Millisecond), Duration(2500 * time.Millisecond), "250 ms", "2.50 s", "10.0x"},
		{"kube-proxy timed out", Duration(30 * time.Second), TimedOut(15 * time.Minute), "30.00 s", ">15m (timeout)", ">30x"},
		{"iptproxy timed out", TimedOut(90 * time.Second), Duration(time.Second), ">1m30s (timeout)", "1.00 s", "—"},
		{"bytes", Bytes(1500), Bytes(3_000_000), "1.5 kB", "3.0 MB", "2000.0x"},
		{"memory", Memory(40 << 20), Memory(380 << 20), "40 MiB", "380 MiB", "9.5x"},
		{"overheads", Overhead(20 * time.Microsecond), Overhead(180 * time.Microsecond), "+20 µs", "+180 µs", "9.0x"},
		{"negative overhead has no ratio", Overhead(-3 * time.Microsecond), Overhead(50 * time.Microsecond), "-3 µs", "+50 µs", "—"},
		{"missing", Missing(UnitDuration, "not run"), Duration(time.Second), "not run", "1.00 s", "—"},
		{"counts", Count(59), Count(28), "59", "28", "0.5x"},
		{"micros", Micros(20 * time.Microsecond), Micros(19 * time.Microsecond), "20 µs", "19 µs", "0.9x"},
		{"long durations", Duration(250 * time.Second), Duration(90 * time.Second), "250 s", "90.00 s", "0.4x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.ipt.String(); got != tt.iptString {
				t.Errorf("iptproxy value = %q, want %q", got, tt.iptString)
			}
			if got := tt.kp.String(); got != tt.kpString {
				t.Errorf("kube-proxy value = %q, want %q", got, tt.kpString)
			}
			if got := Ratio(tt.kp, tt.ipt); got != tt.ratio {
				t.Errorf("Ratio = %q, want %q", got, tt.ratio)
			}
		})
	}
}

func TestMarkdown(t *testing.T) {
	tab := Table{Proxies: []string{ProxyIPTProxy, ProxyKubeProxy, ProxyKubeProxyNFT}, Rows: []Row{
		{Size: "1000x10", Backend: "nft", Key: KeyCold, Metric: "cold start", Values: map[string]Value{
			ProxyIPTProxy: Duration(time.Second), ProxyKubeProxy: Duration(4 * time.Second), ProxyKubeProxyNFT: Duration(2 * time.Second)}},
		{Size: "1000x10", Backend: "nft", Key: "x", Metric: "a|b", Values: map[string]Value{
			ProxyIPTProxy: Missing(UnitBytes, "not run"), ProxyKubeProxy: Bytes(10)}},
	}}
	lines := strings.Split(strings.TrimSuffix(tab.Markdown(), "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("got %d lines, want header, separator and 2 rows:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for i, l := range lines {
		// Every line has the same number of unescaped cell separators.
		if n := strings.Count(l, "|") - strings.Count(l, `\|`); n != 8 {
			t.Errorf("line %d has %d separators, want 8: %q", i, n, l)
		}
	}
	if !strings.Contains(lines[0], "| kube-proxy iptables | kube-proxy nftables | iptproxy ÷ best upstream |") {
		t.Errorf("header = %q", lines[0])
	}
	if !strings.Contains(lines[2], "| 1.00 s | 4.00 s | 2.00 s | 0.50 |") {
		t.Errorf("row 1 = %q, want the figures and the ratio to the best upstream one", lines[2])
	}
	if !strings.Contains(lines[3], "| not run | 10 B | — | — |") {
		t.Errorf("row 2 = %q", lines[3])
	}
	// Without an upstream column there is no ratio column.
	one := Table{Proxies: []string{ProxyIPTProxy}, Rows: tab.Rows[:1]}
	if got := strings.Split(one.Markdown(), "\n")[0]; strings.Contains(got, "÷") {
		t.Errorf("header without upstream = %q, want no ratio column", got)
	}
}

func TestRatioToBest(t *testing.T) {
	tests := []struct {
		name string
		ipt  Value
		up   []Value
		want string
	}{
		{"best of two", Duration(time.Second), []Value{Duration(4 * time.Second), Duration(2 * time.Second)}, "0.50"},
		{"one timed out: the other is best", Duration(3 * time.Second), []Value{TimedOut(time.Minute), Duration(2 * time.Second)}, "1.50"},
		{"all timed out: upper bound", Duration(3 * time.Second), []Value{TimedOut(time.Minute), TimedOut(5 * time.Minute)}, "<0.01"},
		{"iptproxy timed out: lower bound", TimedOut(time.Minute), []Value{Duration(30 * time.Second)}, ">2.00"},
		{"small ratio", Bytes(1500), []Value{Bytes(3_000_000)}, "0.0005"},
		{"negative overhead", Overhead(-3 * time.Microsecond), []Value{Overhead(50 * time.Microsecond)}, "—"},
		{"missing upstream", Memory(1 << 20), []Value{Missing(UnitMemory, "not run")}, "—"},
		{"non-positive upstream ignored", Overhead(10 * time.Microsecond), []Value{Overhead(0), Overhead(20 * time.Microsecond)}, "0.50"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RatioToBest(tt.ipt, tt.up...); got != tt.want {
				t.Errorf("RatioToBest = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestReportRoundTrip(t *testing.T) {
	tab := Table{Proxies: []string{ProxyIPTProxy, ProxyKubeProxyNFT}, Rows: []Row{
		{Size: "1000x10", Backend: "nft", Key: KeyCold, Metric: "cold start", Values: map[string]Value{
			ProxyIPTProxy: Duration(1500 * time.Millisecond), ProxyKubeProxyNFT: TimedOut(15 * time.Minute)}},
	}}
	path := filepath.Join(t.TempDir(), "r.json")
	if err := WriteReport(path, Report{Proxies: tab.Proxies, Rows: tab.ReportRows()}); err != nil {
		t.Fatal(err)
	}
	r, err := ReadReport(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Rows) != 1 || r.Rows[0].Key != KeyCold {
		t.Fatalf("rows = %+v", r.Rows)
	}
	ipt, kp := r.Rows[0].Values[ProxyIPTProxy], r.Rows[0].Values[ProxyKubeProxyNFT]
	if ipt.Value == nil || *ipt.Value != 1.5 || ipt.Unit != "seconds" || ipt.Text != "1.50 s" {
		t.Errorf("iptproxy = %+v", ipt)
	}
	if kp.Value != nil || kp.TimeoutSeconds != 900 || kp.Text != ">15m (timeout)" {
		t.Errorf("kube-proxy-nft = %+v", kp)
	}
}

func TestNFTEndpointJumps(t *testing.T) {
	list := `table ip kube-proxy {
	comment "rules for kube-proxy"
	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 198.19.0.10 . tcp . 80 : goto service-ULMVA6XW-bench/svc-00001/tcp/http }
	}

	chain service-ULMVA6XW-bench/svc-00001/tcp/http {
		ip daddr 198.19.0.10 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
		numgen random mod 2 vmap { 0 : goto endpoint-5OJB2KTY-bench/svc-00001/tcp/http__10.64.0.1/8080, 1 : goto endpoint-AAAA2KTY-bench/svc-00001/tcp/http__10.64.0.2/8080 }
	}

	chain service-ABCDEFGH-bench/svc-00002/tcp/http {
	}

	chain service-ZQ5A3XIH-bench/svc-00578/tcp/http {
		meta l4proto tcp dnat ip to numgen random mod 3 map { 0 : 10.64.22.193 . 8080, 1 : 10.64.22.194 . 8080, 2 : 10.64.22.195 . 8080 }
	}

	chain endpoint-5OJB2KTY-bench/svc-00001/tcp/http__10.64.0.1/8080 {
		ip saddr 10.64.0.1 jump mark-for-masquerade
		meta l4proto tcp dnat to 10.64.0.1:8080
	}
}
`
	got := NFTEndpointJumps(list)
	want := map[string]int{"bench/svc-00001/tcp/http": 2, "bench/svc-00002/tcp/http": 0, "bench/svc-00578/tcp/http": 3}
	if len(got) != len(want) || got["bench/svc-00001/tcp/http"] != 2 || got["bench/svc-00002/tcp/http"] != 0 || got["bench/svc-00578/tcp/http"] != 3 {
		t.Errorf("NFTEndpointJumps = %v, want %v", got, want)
	}
	if k := NFTServiceKey("bench", "svc-00001", "TCP", "http"); k != "bench/svc-00001/tcp/http" {
		t.Errorf("NFTServiceKey = %q", k)
	}
}

// TestNFTShim runs the real nft shim in front of a fake nft: transactions
// are logged with their family, everything else passes through unlogged.
func TestNFTShim(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash not found; the shim needs it")
	}
	realDir := t.TempDir()
	got := filepath.Join(realDir, "got")
	fake := "#!/bin/sh\necho \"$@\" >>" + got + ".args\ncat >" + got + "\nexit 0\n"
	for _, name := range []string{"iptables-nft-restore", "ip6tables-nft-restore", "iptables-nft", "iptables-nft-save", "ip6tables-nft", "ip6tables-nft-save", "nft"} {
		if err := os.WriteFile(filepath.Join(realDir, name), []byte(fake), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	td, err := InstallTools(filepath.Join(t.TempDir(), "tools"), "nft", realDir)
	if err != nil {
		t.Fatal(err)
	}
	run := func(stdin string, args ...string) {
		t.Helper()
		cmd := exec.Command(filepath.Join(td.Dir, "nft"), args...)
		cmd.Env = append(os.Environ(), EnvRestoreLog+"="+td.Log)
		cmd.Stdin = strings.NewReader(stdin)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft %v: %v: %s", args, err, out)
		}
	}
	v4 := "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\nadd chain ip kube-proxy x\n"
	v6 := "add table ip6 kube-proxy { comment \"rules for kube-proxy\" ; }\n"
	run(v4, "-f", "-")
	run("", "--json", "list", "table", "ip", "kube-proxy")
	run(v4, "--check", "-f", "-")
	run(v6, "-f", "-")
	b, err := os.ReadFile(td.Log)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := ParseRestoreLog(string(b))
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 {
		t.Fatalf("logged %d runs, want the 2 transactions: %+v", len(rs), rs)
	}
	if rs[0].Tool != "nft" || rs[0].IPv6() || rs[0].Bytes != int64(len(v4)) {
		t.Errorf("first = %+v, want an IPv4 transaction of %d bytes", rs[0], len(v4))
	}
	if rs[1].Tool != "nft-ip6" || !rs[1].IPv6() || rs[1].Bytes != int64(len(v6)) {
		t.Errorf("second = %+v, want an IPv6 transaction", rs[1])
	}
	if args, _ := os.ReadFile(got + ".args"); string(args) != "-f -\n--json list table ip kube-proxy\n--check -f -\n-f -\n" {
		t.Errorf("real nft got %q", args)
	}
}

func TestParseRestoreLog(t *testing.T) {
	log := "1700000000.000100 1700000000.500000 1234 0 iptables-restore\n\n" +
		"1700000001.5 1700000002.25 0 0 iptables-nft-restore\n" +
		"1700000003.000000 1700000004.000000 99 1 ip6tables-restore\n" +
		"1700000005.000000 1700000006.000000 10 0 iptables-restore\n"
	rs, err := ParseRestoreLog(log)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 4 {
		t.Fatalf("got %d restores, want 4", len(rs))
	}
	if want := time.Unix(1700000000, 100_000); !rs[0].Start.Equal(want) || rs[0].Bytes != 1234 {
		t.Errorf("first = %+v, want start %v and 1234 bytes", rs[0], want)
	}
	if want := time.Unix(1700000002, 250_000_000); !rs[1].End.Equal(want) {
		t.Errorf("second end = %v, want %v", rs[1].End, want)
	}
	if !rs[2].IPv6() || rs[2].ExitCode != 1 || rs[0].IPv6() {
		t.Errorf("families or exit codes wrong: %+v", rs)
	}
	tests := []struct {
		name      string
		ipv6      bool
		from, to  int64
		bytes     int64
		wantCount int
	}{
		{"all IPv4 (version probe not counted)", false, 1699999999, 1700000009, 1244, 2},
		{"window", false, 1700000004, 1700000009, 10, 1},
		{"IPv6: the failed run is not counted", true, 1699999999, 1700000009, 0, 0},
		{"empty window", false, 1800000000, 1800000001, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, n := Written(rs, tt.ipv6, time.Unix(tt.from, 0), time.Unix(tt.to, 0))
			if b != tt.bytes || n != tt.wantCount {
				t.Errorf("Written = %d bytes in %d runs, want %d in %d", b, n, tt.bytes, tt.wantCount)
			}
		})
	}
	for _, bad := range []string{"1 2 3 4", "x 2 3 0 iptables-restore", "1 2 -5 0 iptables-restore", "1.0123456789 2 3 0 iptables-restore", "1 2 3 x iptables-restore"} {
		if _, err := ParseRestoreLog(bad); err == nil {
			t.Errorf("ParseRestoreLog(%q) succeeded, want an error", bad)
		}
	}
}

// TestRestoreShim runs the real shim in front of a fake restore tool and
// checks that the tool gets the same arguments and payload, that the shim
// passes on its exit status, and that the log counts the bytes.
func TestRestoreShim(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash not found; the shim needs it")
	}
	realDir := t.TempDir()
	got := filepath.Join(realDir, "got")
	fake := "#!/bin/sh\necho \"$@\" >" + got + ".args\ncat >" + got + "\nexit 3\n"
	for _, name := range []string{"iptables-nft-restore", "ip6tables-nft-restore", "iptables-nft", "iptables-nft-save", "ip6tables-nft", "ip6tables-nft-save"} {
		if err := os.WriteFile(filepath.Join(realDir, name), []byte(fake), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	td, err := InstallTools(filepath.Join(t.TempDir(), "tools"), "nft", realDir)
	if err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(filepath.Join(td.Dir, "iptables-save")); err != nil || target != filepath.Join(realDir, "iptables-nft-save") {
		t.Errorf("iptables-save -> %q (%v), want the nft tool", target, err)
	}
	payload := "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n"
	for i, name := range []string{"iptables-restore", "iptables-nft-restore"} {
		cmd := exec.Command(filepath.Join(td.Dir, name), "-w", "--noflush")
		cmd.Env = append(os.Environ(), EnvRestoreLog+"="+td.Log)
		cmd.Stdin = strings.NewReader(payload)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("%s: err = %v (%s), want exit status 3", name, err, out)
		}
		if b, _ := os.ReadFile(got); string(b) != payload {
			t.Errorf("%s: real tool got %q, want the payload", name, b)
		}
		if b, _ := os.ReadFile(got + ".args"); string(b) != "-w --noflush\n" {
			t.Errorf("%s: real tool got arguments %q", name, b)
		}
		logData, err := os.ReadFile(td.Log)
		if err != nil {
			t.Fatal(err)
		}
		rs, err := ParseRestoreLog(string(logData))
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != i+1 {
			t.Fatalf("log has %d lines, want %d", len(rs), i+1)
		}
		r := rs[i]
		if r.Bytes != int64(len(payload)) || r.ExitCode != 3 || r.Tool != name || r.End.Before(r.Start) {
			t.Errorf("logged %+v, want %d bytes, exit 3, tool %s", r, len(payload), name)
		}
	}
}

func TestWriteDaemonWrapper(t *testing.T) {
	dir := t.TempDir()
	td := ToolDir{Dir: filepath.Join(dir, "it's tools"), Log: filepath.Join(dir, "log")}
	if err := os.MkdirAll(td.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	wrapper := filepath.Join(dir, "wrapper")
	if err := WriteDaemonWrapper(wrapper, "/bin/sh", td); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(wrapper, "-c", `echo "$PATH|$`+EnvRestoreLog+`|$1"`, "sh", "arg one").Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Split(strings.TrimSpace(string(out)), "|")
	if len(f) != 3 || !strings.HasPrefix(f[0], td.Dir+":") || f[1] != td.Log || f[2] != "arg one" {
		t.Errorf("wrapper ran with %q, want PATH starting with %q, the log and the arguments", out, td.Dir)
	}
	td.Keep = filepath.Join(dir, "keep")
	if err := WriteDaemonWrapper(wrapper, "/bin/sh", td); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(wrapper, "-c", `echo "$`+EnvKeep+`"`).Output(); err != nil || strings.TrimSpace(string(out)) != td.Keep {
		t.Errorf("wrapper with Keep: %s=%q (%v), want %q", EnvKeep, out, err, td.Keep)
	}
}

func TestRules(t *testing.T) {
	save := `# Generated by iptables-nft-save v1.8.9
*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AAA - [0:0]
-A KUBE-SERVICES -d 198.19.0.20/32 -p tcp -m comment --comment "bench/svc-2:http cluster IP -d 1.2.3.4/32" -m tcp --dport 80 -j KUBE-SVC-BBB
-A KUBE-SERVICES -d 198.19.0.10/32 -p tcp -m comment --comment "bench/svc-1:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-AAA
-A KUBE-SERVICES -d 198.19.0.10/32 -p tcp -m tcp --dport 81 -j KUBE-SVC-CCC
-A KUBE-SERVICES -d 198.19.0.0/24 -j KUBE-DISPATCH-1
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-AAA -m comment --comment "bench/svc-1:http -> 10.64.0.1:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-X1
-A KUBE-SVC-AAA -m comment --comment "say \"hi\"" -j KUBE-SEP-X2
-A KUBE-SVC-BBB ! -s 198.18.128.0/17 -d 198.19.0.20/32 -j KUBE-MARK-MASQ
-A KUBE-SVC-BBB -j KUBE-SEP-Y1
COMMIT
`
	jumps := EndpointJumps(save)
	if jumps["KUBE-SVC-AAA"] != 2 || jumps["KUBE-SVC-BBB"] != 1 || len(jumps) != 2 {
		t.Errorf("EndpointJumps = %v, want AAA:2 BBB:1", jumps)
	}
	got := ChainDestinations(save, "KUBE-SERVICES")
	want := []netip.Addr{netip.MustParseAddr("198.19.0.20"), netip.MustParseAddr("198.19.0.10")}
	if !slices.Equal(got, want) {
		t.Errorf("ChainDestinations = %v, want %v (rule order, no ranges, no comment text)", got, want)
	}
}

func TestNthAddr(t *testing.T) {
	p := netip.MustParsePrefix("10.64.0.0/12")
	tests := []struct {
		i    int
		want string
	}{
		{0, "10.64.0.1"}, {253, "10.64.0.254"}, {254, "10.64.1.1"}, {254*256 + 3, "10.65.0.4"},
	}
	for _, tt := range tests {
		got, err := NthAddr(p, tt.i)
		if err != nil || got.String() != tt.want {
			t.Errorf("NthAddr(%s, %d) = %v, %v; want %s", p, tt.i, got, err, tt.want)
		}
	}
	if _, err := NthAddr(netip.MustParsePrefix("10.96.0.0/24"), 254); err == nil {
		t.Errorf("NthAddr beyond a /24 succeeded, want an error")
	}
	if _, err := NthAddr(p, -1); err == nil {
		t.Errorf("NthAddr(-1) succeeded, want an error")
	}
}

func TestParseSizes(t *testing.T) {
	got, err := ParseSizes(" 1000x10, 10000X10 ,")
	if err != nil || !slices.Equal(got, []Size{{1000, 10}, {10000, 10}}) {
		t.Errorf("ParseSizes = %v, %v", got, err)
	}
	if got[0].String() != "1000x10" {
		t.Errorf("Size.String = %q", got[0].String())
	}
	for _, bad := range []string{"", "1000", "0x10", "10x0", "ax10", "100000x1", "10x2000"} {
		if _, err := ParseSizes(bad); err == nil {
			t.Errorf("ParseSizes(%q) succeeded, want an error", bad)
		}
	}
	if l, err := ParseList("nft, legacy", "nft", "legacy"); err != nil || !slices.Equal(l, []string{"nft", "legacy"}) {
		t.Errorf("ParseList = %v, %v", l, err)
	}
	if _, err := ParseList("nft,ipvs", "nft", "legacy"); err == nil {
		t.Errorf("ParseList accepted ipvs")
	}
}

func TestConnectTimes(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no IPv4 loopback listener: %v", err)
	}
	defer ln.Close() //nolint:errcheck // test listener
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ts, failed, err := ConnectTimes(addr, 20, time.Second)
	if err != nil || failed != 0 || len(ts) != 20 {
		t.Fatalf("ConnectTimes to a listener = %d times, %d failed, %v; want 20, 0, nil", len(ts), failed, err)
	}
	for _, d := range ts {
		if d <= 0 {
			t.Errorf("connect time %v, want > 0", d)
		}
	}
	ln.Close() //nolint:errcheck,gosec // now nothing listens: connects are refused
	ts, failed, err = ConnectTimes(addr, 3, time.Second)
	if err != nil || failed != 3 || len(ts) != 0 {
		t.Errorf("ConnectTimes to a closed port = %d times, %d failed, %v; want 0, 3, nil", len(ts), failed, err)
	}
	if _, _, err := ConnectTimes(netip.MustParseAddrPort("[::1]:80"), 1, time.Second); err == nil {
		t.Errorf("ConnectTimes accepted an IPv6 address")
	}
}

func TestParseHistogramAndQuantile(t *testing.T) {
	text := `# HELP kubeproxy_network_programming_duration_seconds In Cluster Network Programming Latency in seconds
# TYPE kubeproxy_network_programming_duration_seconds histogram
kubeproxy_network_programming_duration_seconds_bucket{le="0.25"} 10
kubeproxy_network_programming_duration_seconds_bucket{le="0.5"} 50
kubeproxy_network_programming_duration_seconds_bucket{le="1"} 90
kubeproxy_network_programming_duration_seconds_bucket{le="+Inf"} 100
kubeproxy_network_programming_duration_seconds_sum 60
kubeproxy_network_programming_duration_seconds_count 100
other_metric{a="x,y",b="q\"uote"} 7
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 12 1700000000000
`
	h, err := ParseHistogram(text, "kubeproxy_network_programming_duration_seconds")
	if err != nil {
		t.Fatal(err)
	}
	if h.Count != 100 || h.Sum != 60 || len(h.Buckets) != 4 || !math.IsInf(h.Buckets[3].UpperBound, 1) {
		t.Fatalf("parsed %+v", h)
	}
	tests := []struct {
		q, want float64
	}{
		{0.05, 0.125}, // inside the first bucket, from 0
		{0.5, 0.5},    // exactly at a bound
		{0.7, 0.75},   // interpolated in (0.5, 1]
		{0.99, 1},     // in +Inf: the highest finite bound
	}
	for _, tt := range tests {
		if got := h.Quantile(tt.q); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("Quantile(%v) = %v, want %v", tt.q, got, tt.want)
		}
	}
	before := Histogram{Buckets: []Bucket{{0.25, 10}, {0.5, 10}, {1, 10}, {math.Inf(1), 10}}, Count: 10, Sum: 1}
	d := h.Sub(before)
	if d.Count != 90 || d.Buckets[0].Count != 0 || d.Buckets[1].Count != 40 {
		t.Errorf("Sub = %+v", d)
	}
	// 90 new observations: 0 in the first bucket, 40 up to 0.5, 80 up to 1.
	if got := d.Quantile(0.5); math.Abs(got-0.5625) > 1e-9 {
		t.Errorf("median of the difference = %v, want 0.5625", got)
	}
	syncs, err := ParseHistogram(text, "kubeproxy_sync_proxy_rules_duration_seconds")
	if err != nil || syncs.Count != 12 {
		t.Errorf("sync count = %v, %v; want 12 (sample with a timestamp)", syncs.Count, err)
	}
	if empty, err := ParseHistogram(text, "absent"); err != nil || !math.IsNaN(empty.Quantile(0.5)) {
		t.Errorf("absent histogram: %+v, %v; want empty and NaN quantile", empty, err)
	}
	if _, err := ParseHistogram(`x_bucket{le="a"} 1`, "x"); err == nil {
		t.Errorf("bad le accepted")
	}
	if _, err := ParseHistogram(`x_bucket{le="1"`, "x"); err == nil {
		t.Errorf("unterminated labels accepted")
	}
}

func TestBurstEnd(t *testing.T) {
	at := func(s float64) time.Time { return time.Unix(1000, 0).Add(time.Duration(s * float64(time.Second))) }
	r := func(start, end float64, tool string) Restore {
		return Restore{Start: at(start), End: at(end), Bytes: 100, Tool: tool}
	}
	tests := []struct {
		name string
		rs   []Restore
		from float64
		want time.Time
	}{
		{"one restore", []Restore{r(1, 2, "iptables-restore")}, 0, at(2)},
		{"chunks back to back, then a later change", []Restore{
			r(1, 1.2, "iptables-restore"), r(1.3, 1.5, "iptables-restore"), r(1.6, 21, "iptables-restore"),
			r(30, 30.4, "iptables-restore"),
		}, 0, at(21)},
		{"IPv6 restores do not extend the IPv4 burst", []Restore{
			r(1, 2, "iptables-restore"), r(2.5, 9, "ip6tables-restore"),
		}, 0, at(2)},
		{"restores before from are left out", []Restore{r(1, 2, "iptables-restore"), r(10, 11, "iptables-restore")}, 5, at(11)},
		{"nothing after from", []Restore{r(1, 2, "iptables-restore")}, 5, time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := BurstEnd(tt.rs, false, at(tt.from), 3*time.Second); !got.Equal(tt.want) && !(got.IsZero() && tt.want.IsZero()) {
				t.Errorf("BurstEnd = %v, want %v", got, tt.want)
			}
		})
	}
}
