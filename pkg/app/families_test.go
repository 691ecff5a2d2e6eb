package app

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/iptproxy/iptproxy/pkg/iptables"
)

// installTools writes stand-ins for "<prefix>-nft", -save and -restore
// into dir; body is what they do for anything but --version.
func installTools(t *testing.T, dir, prefix, body string) {
	t.Helper()
	for _, suffix := range []string{"", "-save", "-restore"} {
		name := prefix + "-nft" + suffix
		script := "#!/bin/sh\nif [ \"$1\" = --version ]; then echo \"" + name + " v1.8.9 (nf_tables)\"; exit 0; fi\n" + body + "\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// TestServedFamilies checks that a family whose iptables tools or kernel
// support are missing is skipped with one clear log line, and that the
// primary family cannot be.
func TestServedFamilies(t *testing.T) {
	const (
		works     = "exit 0"
		noKernel  = "echo \"ip6tables v1.8.9 (nf_tables): can't initialize ip6tables table \\`nat': Table does not exist (do you need to insmod?)\" >&2; exit 3"
		noKernel4 = "echo \"iptables v1.8.9 (nf_tables): can't initialize iptables table \\`nat': Table does not exist (do you need to insmod?)\" >&2; exit 3"
	)
	tests := []struct {
		name      string
		primary   v1.IPFamily
		install   map[string]string // tool prefix -> body
		want      []v1.IPFamily
		wantErr   bool
		wantLog   string // the one skip line must contain this
		wantNoLog bool
	}{
		{name: "both families", primary: v1.IPv4Protocol,
			install: map[string]string{"iptables": works, "ip6tables": works},
			want:    []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}, wantNoLog: true},
		{name: "no ip6tables tools", primary: v1.IPv4Protocol,
			install: map[string]string{"iptables": works},
			want:    []v1.IPFamily{v1.IPv4Protocol}, wantLog: "ip6tables-nft nor ip6tables found"},
		{name: "IPv6 primary without an IPv6 nat table", primary: v1.IPv6Protocol,
			install: map[string]string{"iptables": works, "ip6tables": noKernel},
			wantErr: true},
		{name: "IPv4 primary, no IPv6 nat table in the kernel", primary: v1.IPv4Protocol,
			install: map[string]string{"iptables": works, "ip6tables": noKernel},
			want:    []v1.IPFamily{v1.IPv4Protocol}, wantLog: "Table does not exist"},
		{name: "IPv6 primary, no IPv4 nat table", primary: v1.IPv6Protocol,
			install: map[string]string{"iptables": noKernel4, "ip6tables": works},
			want:    []v1.IPFamily{v1.IPv6Protocol}, wantLog: "Table does not exist"},
		{name: "primary family missing", primary: v1.IPv4Protocol,
			install: map[string]string{"ip6tables": works},
			wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for prefix, body := range tt.install {
				installTools(t, dir, prefix, body)
			}
			logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
			ctx := klog.NewContext(context.Background(), logger)
			got, err := servedFamilies(ctx, tt.primary, func(ctx context.Context, fam v1.IPFamily) error {
				return iptables.Present(ctx, fam, iptables.BackendNFT, iptables.WithBinDir(dir))
			})
			if (err != nil) != tt.wantErr {
				t.Fatalf("servedFamilies: err %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				if !strings.Contains(err.Error(), "primary IP family "+string(tt.primary)) {
					t.Errorf("error %q does not name the primary family", err)
				}
				return
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("families = %v, want %v", got, tt.want)
			}
			var skips []string
			for _, e := range logger.GetSink().(ktesting.Underlier).GetBuffer().Data() {
				if strings.Contains(e.Message, "No iptables support") {
					skips = append(skips, e.Message+" "+strings.TrimSpace(strings.Join(kvStrings(e.WithKVList, e.ParameterKVList), " ")))
				}
			}
			switch {
			case tt.wantNoLog && len(skips) != 0:
				t.Errorf("unexpected skip lines: %q", skips)
			case !tt.wantNoLog && len(skips) != 1:
				t.Errorf("got %d skip lines, want exactly one: %q", len(skips), skips)
			case !tt.wantNoLog && !strings.Contains(skips[0], tt.wantLog):
				t.Errorf("skip line %q does not say %q", skips[0], tt.wantLog)
			case !tt.wantNoLog && !strings.Contains(skips[0], string(otherFamily(tt.primary))):
				t.Errorf("skip line %q does not name the family", skips[0])
			}
		})
	}
}

func kvStrings(lists ...[]any) []string {
	var out []string
	for _, l := range lists {
		for _, v := range l {
			out = append(out, fmt.Sprint(v))
		}
	}
	return out
}
