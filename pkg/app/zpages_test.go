package app

import (
	"testing"

	"github.com/spf13/pflag"

	"github.com/iptproxy/iptproxy/pkg/options"
)

// TestZPages: the daemon's z-pages name kube-proxy and the version it is
// compatible with, and /flagz reads the command line main parsed.
func TestZPages(t *testing.T) {
	o := options.NewOptions()
	fs := pflag.NewFlagSet("iptproxy", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse([]string{"--hostname-override=node-a"}); err != nil {
		t.Fatal(err)
	}
	z := zpages(o)
	if z.Component != "kube-proxy" || z.BinaryVersion == "" || z.BinaryVersion[0] == 'v' || z.EmulationVersion == "" || z.Flags == nil {
		t.Fatalf("%+v", z)
	}
	if got := z.Flags()["hostname-override"]; got != "node-a" {
		t.Errorf("flagz hostname-override = %q", got)
	}
	if z := zpages(options.NewOptions()); z.Flags != nil {
		t.Errorf("options without flags serve /flagz")
	}
}
