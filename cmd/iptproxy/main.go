// Command iptproxy is a drop-in replacement for kube-proxy's iptables mode.
// It accepts kube-proxy's flags and KubeProxyConfiguration file. Its first
// argument may instead name an operator subcommand (show, trace, render,
// diff; see pkg/cli).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
	cliflag "k8s.io/component-base/cli/flag"
	logsapi "k8s.io/component-base/logs/api/v1"
	_ "k8s.io/component-base/logs/json/register" // --logging-format=json, as kube-proxy
	"k8s.io/klog/v2"

	"github.com/iptproxy/iptproxy/pkg/app"
	"github.com/iptproxy/iptproxy/pkg/cli"
	"github.com/iptproxy/iptproxy/pkg/options"
	"github.com/iptproxy/iptproxy/pkg/version"
)

func main() {
	if len(os.Args) > 1 && cli.IsCommand(os.Args[1]) {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := cli.Run(ctx, cli.DefaultEnv(), os.Args[1:])
		stop()
		os.Exit(code)
	}
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := pflag.NewFlagSet("iptproxy", pflag.ContinueOnError)
	fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	o := options.NewOptions()
	o.AddFlags(fs)
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	fs.AddGoFlagSet(klogFlags)
	showVersion := fs.Bool("version", false, "Print version information and quit")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: iptproxy [flags]          run the proxy (kube-proxy's flags)\n"+
			"       iptproxy %s ...  explain the rules (see \"iptproxy COMMAND --help\")\n\nFlags:\n%s",
			strings.Join(cli.Commands, "|"), fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "iptproxy takes no positional arguments, got %q\n", fs.Args())
		return 2
	}
	if *showVersion {
		fmt.Printf("iptproxy %s (kube-proxy %s compatible)\n", version.Version, version.KubernetesCompat)
		return 0
	}
	defer klog.Flush()
	logger := klog.Background()
	o.Logger = logger
	if err := o.Complete(fs); err != nil {
		logger.Error(err, "Invalid configuration")
		return 1
	}
	if err := logsapi.ValidateAndApply(&o.Config.Logging, o.FeatureGate()); err != nil {
		logger.Error(err, "Invalid logging configuration")
		return 1
	}
	if err := o.Validate(); err != nil {
		logger.Error(err, "Invalid configuration")
		return 1
	}
	if o.WriteConfigTo != "" {
		if err := o.WriteConfigFile(); err != nil {
			logger.Error(err, "Writing configuration")
			return 1
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = klog.NewContext(ctx, logger)
	logger.Info("Starting iptproxy", "version", version.Version, "compatibleWith", version.KubernetesCompat)
	if err := app.Run(ctx, o); err != nil {
		logger.Error(err, "iptproxy failed")
		return 1
	}
	return 0
}
