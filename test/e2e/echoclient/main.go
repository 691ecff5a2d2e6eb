// Command echoclient sends requests to an echo server (see echoserver) and
// prints each reply, or the class of failure (refused, timeout, unreachable,
// reset). Run it inside a namespace with "ip netns exec":
//
//	echoclient [--proto tcp|udp|sctp] [--count 9] [--timeout 2s] ADDRESS:PORT
//
// It exits 1 when any request failed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/iptproxy/iptproxy/test/e2e/echo"
)

func main() {
	protoFlag := flag.String("proto", "tcp", "protocol: tcp, udp or sctp")
	count := flag.Int("count", 1, "number of requests, each on a new connection")
	timeout := flag.Duration("timeout", 2*time.Second, "timeout per request")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] ADDRESS:PORT\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	proto, err := echo.ParseProtocol(*protoFlag)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	addr, err := netip.ParseAddrPort(flag.Arg(0))
	if err != nil {
		fmt.Fprintf(os.Stderr, "invalid address %q: %v\n", flag.Arg(0), err)
		os.Exit(2)
	}
	failed := false
	for range *count {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		r, err := echo.Request(ctx, proto, addr)
		cancel()
		if err != nil {
			failed = true
			fmt.Printf("error: %s (%v)\n", class(err), err)
			continue
		}
		fmt.Println(r)
	}
	if failed {
		os.Exit(1)
	}
}

func class(err error) string {
	for _, c := range []error{echo.ErrRefused, echo.ErrTimeout, echo.ErrUnreachable, echo.ErrReset} {
		if errors.Is(err, c) {
			return c.Error()
		}
	}
	return "other"
}
