// Command echoserver is the end-to-end tests' backend: it answers every TCP
// line, UDP datagram and SCTP message with its name and the client address
// it saw ("pod-a 198.18.129.2:41234").
//
//	echoserver --name pod-a --tcp 8080 --udp 8080 --sctp 8080 --ready-file /tmp/x
//
// Once every port is bound it creates the ready file (if asked) and prints
// "ready"; it exits on SIGINT or SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/iptproxy/iptproxy/test/e2e/echo"
)

// ports is a flag.Value holding a comma-separated list of ports.
type ports []int

func (p *ports) String() string {
	s := make([]string, len(*p))
	for i, v := range *p {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ",")
}

func (p *ports) Set(v string) error {
	for f := range strings.SplitSeq(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("invalid port %q", f)
		}
		*p = append(*p, n)
	}
	return nil
}

func main() {
	var tcp, udp, sctp ports
	name := flag.String("name", "", "name to answer with (default: the hostname)")
	readyFile := flag.String("ready-file", "", "file to create once every port is bound")
	flag.Var(&tcp, "tcp", "comma-separated TCP ports (repeatable)")
	flag.Var(&udp, "udp", "comma-separated UDP ports (repeatable)")
	flag.Var(&sctp, "sctp", "comma-separated SCTP ports (repeatable)")
	flag.Parse()
	log.SetPrefix("echoserver: ")
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)

	if *name == "" {
		h, err := os.Hostname()
		if err != nil {
			log.Fatalf("no --name and no hostname: %v", err)
		}
		*name = h
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	s := &echo.Server{Name: *name, TCPPorts: tcp, UDPPorts: udp, SCTPPorts: sctp, Logf: log.Printf}
	err := s.Run(ctx, func() {
		if *readyFile != "" {
			if err := os.WriteFile(*readyFile, []byte("ready\n"), 0o644); err != nil {
				log.Fatalf("writing ready file: %v", err)
			}
		}
		log.Printf("ready: name=%s tcp=%s udp=%s sctp=%s", *name, tcp.String(), udp.String(), sctp.String())
	})
	if err != nil {
		log.Fatal(err)
	}
}
