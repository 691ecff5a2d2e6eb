package options

import (
	"fmt"
	"net"
	"strconv"

	netutils "k8s.io/utils/net"
)

// parseIP parses an IP address the way Kubernetes does (accepting leading
// zeros in IPv4 octets); it returns nil for an invalid address.
func parseIP(s string) net.IP {
	return netutils.ParseIPSloppy(s)
}

// appendPortIfNeeded returns addr with port appended when addr is a bare IP
// address, and addr unchanged when it already has a port or is not an IP at
// all (validation reports that).
func appendPortIfNeeded(addr string, port int32) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	if parseIP(addr) == nil {
		return addr
	}
	return net.JoinHostPort(addr, strconv.Itoa(int(port)))
}

// addressFromDeprecatedFlags applies --healthz-port / --metrics-port to a
// bind address: port 0 disables the server (empty address), any other port
// is appended when the address has none.
func addressFromDeprecatedFlags(addr string, port int32) string {
	if port == 0 {
		return ""
	}
	return appendPortIfNeeded(addr, port)
}

// checkIPOrIPPort accepts "IP" and "IP:port", as kube-proxy's bind-address
// flags do.
func checkIPOrIPPort(s string) error {
	if parseIP(s) != nil {
		return nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not in a valid format (ip or ip:port): %w", s, err)
	}
	if parseIP(host) == nil {
		return fmt.Errorf("%q is not a valid IP address", host)
	}
	if _, err := netutils.ParsePort(port, true); err != nil {
		return fmt.Errorf("%q is not a valid number", port)
	}
	return nil
}
