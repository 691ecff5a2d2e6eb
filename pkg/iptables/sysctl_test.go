package iptables

import (
	"os"
	"path/filepath"
	"testing"

	"k8s.io/klog/v2/ktesting"
)

func TestEnsureSysctl(t *testing.T) {
	tests := []struct {
		name    string
		key     string
		file    string
		initial string
		value   int
		want    string
		wantErr bool
	}{
		{name: "dotted", key: "net.ipv4.conf.all.route_localnet", file: "net/ipv4/conf/all/route_localnet", initial: "0\n", value: 1, want: "1\n"},
		{name: "slashed with a dotted interface", key: "net/ipv4/conf/eth0.100/route_localnet", file: "net/ipv4/conf/eth0.100/route_localnet", initial: "0\n", value: 1, want: "1\n"},
		{name: "already set is left alone", key: "net.ipv4.ip_forward", file: "net/ipv4/ip_forward", initial: "1", value: 1, want: "1"},
		{name: "missing", key: "net.ipv4.nope", file: "net/ipv4/other", initial: "0", value: 1, wantErr: true},
		{name: "empty name", key: "", file: "net/x", initial: "0", value: 1, wantErr: true},
		{name: "no escape from the root", key: "../../etc/passwd", file: "etc/passwd", initial: "0", value: 1, want: "1\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			root := t.TempDir()
			path := filepath.Join(root, tc.file)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(tc.initial), 0o644); err != nil {
				t.Fatal(err)
			}
			err := ensureSysctl(ctx, root, tc.key, tc.value)
			if (err != nil) != tc.wantErr {
				t.Fatalf("ensureSysctl() = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			got, _ := os.ReadFile(path)
			if string(got) != tc.want {
				t.Errorf("file holds %q, want %q", got, tc.want)
			}
		})
	}
}
