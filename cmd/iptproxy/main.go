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
	"io"
	"os"
	"os/signal"
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
	if len(os.Args) == 2 && os.Args[1] == "help" {
		os.Exit(run([]string{"--help"}, os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && (cli.IsCommand(os.Args[1]) || os.Args[1] == "help") {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := cli.Run(ctx, cli.DefaultEnv(), os.Args[1:])
		stop()
		os.Exit(code)
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the kube-proxy drop-in: it parses kube-proxy's flags and runs the
// proxy. --help and --version print on stdout and return 0, as kube-proxy's
// do; a bad command line prints on stderr and returns 2.
func run(args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("iptproxy", pflag.ContinueOnError)
	fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	o := options.NewOptions()
	o.AddFlags(fs)
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	fs.AddGoFlagSet(klogFlags)
	showVersion := fs.Bool("version", false, "Print version information and quit")
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stdout, "iptproxy is a drop-in replacement for kube-proxy's iptables mode.\n\n"+
			"Usage: iptproxy [flags]          run the proxy (kube-proxy's flags)\n"+
			"       iptproxy COMMAND [flags]  explain the rules\n\n%s\nFlags:\n%s",
			cli.CommandsHelp, fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "Error: %v\nRun 'iptproxy --help' for usage.\n", err)
		return 2
	}
	if fs.NArg() > 0 {
		// The proxy takes no arguments: the first one was meant as a command.
		if cli.IsCommand(fs.Arg(0)) {
			fmt.Fprintf(stderr, "Error: the command %q must come first: iptproxy %s [flags]\n", fs.Arg(0), fs.Arg(0))
			return 2
		}
		fmt.Fprint(stderr, cli.UnknownCommand(fs.Arg(0)))
		return 2
	}
	if *showVersion {
		fmt.Fprintf(stdout, "iptproxy %s (kube-proxy %s compatible)\n", version.Version, version.KubernetesCompat)
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
