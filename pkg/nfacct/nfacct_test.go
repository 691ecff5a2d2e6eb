package nfacct

import (
	"encoding/binary"
	"errors"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink/nl"

	"github.com/iptproxy/iptproxy/pkg/iptables/kerneltest"
)

func TestDecode(t *testing.T) {
	attr := func(typ int, v []byte) []byte { return nl.NewRtAttr(typ, v).Serialize() }
	u64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	msg := func(attrs ...[]byte) []byte {
		b := make([]byte, nl.SizeofNfgenmsg)
		for _, a := range attrs {
			b = append(b, a...)
		}
		return b
	}
	tests := []struct {
		name    string
		msg     []byte
		want    Counter
		wantErr bool
	}{
		{"all three", msg(attr(attrName, nl.ZeroTerminated("abc")), attr(attrPackets, u64(7)), attr(attrBytes, u64(1<<40))),
			Counter{Name: "abc", Packets: 7, Bytes: 1 << 40}, false},
		{"unknown attributes are skipped", msg(attr(9, []byte{1, 2, 3}), attr(attrName, nl.ZeroTerminated("localhost_nps_accepted_pkts")), attr(attrBytes, u64(2)), attr(attrPackets, u64(1))),
			Counter{Name: "localhost_nps_accepted_pkts", Packets: 1, Bytes: 2}, false},
		{"missing bytes", msg(attr(attrName, nl.ZeroTerminated("abc")), attr(attrPackets, u64(7))), Counter{}, true},
		{"short counter", msg(attr(attrName, nl.ZeroTerminated("abc")), attr(attrPackets, []byte{1}), attr(attrBytes, u64(1))), Counter{}, true},
		{"too short", []byte{1, 2}, Counter{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decode(tt.msg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("decode: err %v, want error %v", err, tt.wantErr)
			}
			if err == nil && *got != tt.want {
				t.Errorf("decode = %+v, want %+v", *got, tt.want)
			}
		})
	}
}

// TestKernel creates counters in a private network namespace, counts
// packets in one with an iptables rule and reads the count back.
func TestKernel(t *testing.T) {
	kerneltest.Enter(t)
	c, err := New()
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("kernel test: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const name = "localhost_nps_accepted_pkts"
	if _, err := c.Get(name); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get before Ensure: %v, want ErrNotFound", err)
	}
	for range 2 { // the second Ensure finds it
		if err := c.Ensure(name); err != nil {
			t.Fatalf("Ensure: %v", err)
		}
	}
	if n, err := c.Packets(name); err != nil || n != 0 {
		t.Fatalf("Packets = %d, %v; want 0", n, err)
	}
	if err := c.Ensure(strings.Repeat("x", MaxNameLength+1)); err == nil {
		t.Errorf("Ensure accepted a name longer than %d characters", MaxNameLength)
	}

	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v: %s", err, out)
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("kernel test: no iptables binary")
	}
	rule := []string{"-A", "OUTPUT", "-d", "127.0.0.1", "-p", "tcp", "--dport", "30080", "-m", "nfacct", "--nfacct-name", name}
	if out, err := exec.Command("iptables", rule...).CombinedOutput(); err != nil {
		t.Fatalf("iptables %v: %v: %s", rule, err, out)
	}
	// Nothing listens: the SYN is counted, the connection refused.
	if conn, err := net.DialTimeout("tcp", "127.0.0.1:30080", 2*time.Second); err == nil {
		conn.Close()
	}
	if n, err := c.Packets(name); err != nil || n != 1 {
		t.Errorf("Packets after one SYN = %d, %v; want 1", n, err)
	}
}
