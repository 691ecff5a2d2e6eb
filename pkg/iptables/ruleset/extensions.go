package ruleset

// This file lists the options iptables knows: the base options of a rule,
// and the options of the match and target extensions that iptproxy, kube-
// proxy and the usual neighbours (CNI plugins, Docker, firewalld) write.
// The lists are switch statements rather than maps so that there is no
// package-level state.

// optDef describes one option: its canonical name, how many arguments it
// takes and whether "!" may precede it.
type optDef struct {
	name  string
	nargs int
	neg   bool
}

func def(name string, nargs int, neg bool) (optDef, bool) {
	return optDef{name: name, nargs: nargs, neg: neg}, true
}

// baseOpt describes the options that are not part of an extension.
func baseOpt(name string) (optDef, bool) {
	switch name {
	case "-s", "--source", "--src":
		return def("-s", 1, true)
	case "-d", "--destination", "--dst":
		return def("-d", 1, true)
	case "-p", "--protocol":
		return def("-p", 1, true)
	case "-i", "--in-interface":
		return def("-i", 1, true)
	case "-o", "--out-interface":
		return def("-o", 1, true)
	case "-f", "--fragment":
		return def("-f", 0, true)
	case "-m", "--match":
		return def("-m", 1, false)
	case "-j", "--jump":
		return def("-j", 1, false)
	case "-g", "--goto":
		return def("-g", 1, false)
	case "-c", "--set-counters":
		return def("-c", 2, false)
	}
	return optDef{}, false
}

// knownModule reports whether matchOpt knows the options of module.
func knownModule(module string) bool {
	switch module {
	case "tcp", "udp", "sctp", "comment", "addrtype", "mark", "connmark",
		"conntrack", "state", "statistic", "recent", "nfacct", "multiport",
		"physdev", "set", "owner", "limit", "icmp", "icmp6", "iprange", "mac",
		"pkttype", "length", "socket", "rpfilter":
		return true
	}
	return false
}

// matchOpt describes an option of a match extension.
func matchOpt(module, name string) (optDef, bool) {
	switch module {
	case "tcp":
		switch name {
		case "--sport", "--source-port":
			return def("--sport", 1, true)
		case "--dport", "--destination-port":
			return def("--dport", 1, true)
		case "--tcp-flags":
			return def("--tcp-flags", 2, true)
		case "--syn":
			return def("--syn", 0, true)
		case "--tcp-option":
			return def("--tcp-option", 1, true)
		}
	case "udp":
		switch name {
		case "--sport", "--source-port":
			return def("--sport", 1, true)
		case "--dport", "--destination-port":
			return def("--dport", 1, true)
		}
	case "sctp":
		switch name {
		case "--sport", "--source-port":
			return def("--sport", 1, true)
		case "--dport", "--destination-port":
			return def("--dport", 1, true)
		case "--chunk-types":
			return def("--chunk-types", 2, true)
		}
	case "comment":
		if name == "--comment" {
			return def("--comment", 1, false)
		}
	case "addrtype":
		switch name {
		case "--src-type":
			return def(name, 1, true)
		case "--dst-type":
			return def(name, 1, true)
		case "--limit-iface-in", "--limit-iface-out":
			return def(name, 0, false)
		}
	case "mark", "connmark":
		if name == "--mark" {
			return def(name, 1, true)
		}
	case "conntrack":
		switch name {
		case "--ctstate", "--ctproto", "--ctorigsrc", "--ctorigdst", "--ctreplsrc", "--ctrepldst",
			"--ctorigsrcport", "--ctorigdstport", "--ctreplsrcport", "--ctrepldstport",
			"--ctstatus", "--ctexpire":
			return def(name, 1, true)
		case "--ctdir":
			return def(name, 1, false)
		}
	case "state":
		if name == "--state" {
			return def(name, 1, true)
		}
	case "statistic":
		switch name {
		case "--mode", "--packet":
			return def(name, 1, false)
		case "--probability", "--every":
			return def(name, 1, true)
		}
	case "recent":
		switch name {
		case "--name", "--seconds", "--hitcount", "--mask":
			return def(name, 1, false)
		case "--set", "--rcheck", "--update", "--remove":
			return def(name, 0, true)
		case "--reap", "--rttl", "--rsource", "--rdest":
			return def(name, 0, false)
		}
	case "nfacct":
		if name == "--nfacct-name" {
			return def(name, 1, false)
		}
	case "multiport":
		switch name {
		case "--sports", "--source-ports":
			return def("--sports", 1, true)
		case "--dports", "--destination-ports":
			return def("--dports", 1, true)
		case "--ports":
			return def(name, 1, true)
		}
	case "physdev":
		switch name {
		case "--physdev-in", "--physdev-out":
			return def(name, 1, true)
		case "--physdev-is-in", "--physdev-is-out", "--physdev-is-bridged":
			return def(name, 0, true)
		}
	case "set":
		switch name {
		case "--match-set":
			return def(name, 2, true)
		case "--return-nomatch":
			return def(name, 0, false)
		case "--update-counters", "--update-subcounters":
			return def(name, 0, true)
		case "--packets-eq", "--bytes-eq":
			return def(name, 1, true)
		case "--packets-lt", "--packets-gt", "--bytes-lt", "--bytes-gt":
			return def(name, 1, false)
		}
	case "owner":
		switch name {
		case "--uid-owner", "--gid-owner":
			return def(name, 1, true)
		case "--socket-exists":
			return def(name, 0, true)
		case "--suppl-groups":
			return def(name, 0, false)
		}
	case "limit":
		switch name {
		case "--limit", "--limit-burst":
			return def(name, 1, false)
		}
	case "icmp":
		if name == "--icmp-type" {
			return def(name, 1, true)
		}
	case "icmp6":
		if name == "--icmpv6-type" {
			return def(name, 1, true)
		}
	case "iprange":
		switch name {
		case "--src-range", "--dst-range":
			return def(name, 1, true)
		}
	case "mac":
		if name == "--mac-source" {
			return def(name, 1, true)
		}
	case "pkttype":
		if name == "--pkt-type" {
			return def(name, 1, true)
		}
	case "length":
		if name == "--length" {
			return def(name, 1, true)
		}
	case "socket":
		switch name {
		case "--transparent", "--nowildcard", "--restore-skmark":
			return def(name, 0, false)
		}
	case "rpfilter":
		switch name {
		case "--loose", "--validmark", "--accept-local", "--invert":
			return def(name, 0, false)
		}
	}
	return optDef{}, false
}

// Standard verdicts: targets that are not extensions and not chains.
const (
	// TargetAccept lets the packet through the current hook.
	TargetAccept = "ACCEPT"
	// TargetDrop drops the packet.
	TargetDrop = "DROP"
	// TargetReturn returns from the current chain.
	TargetReturn = "RETURN"
	// TargetQueue passes the packet to user space.
	TargetQueue = "QUEUE"
)

// IsVerdict reports whether target is one of the standard verdicts.
func IsVerdict(target string) bool {
	switch target {
	case TargetAccept, TargetDrop, TargetReturn, TargetQueue:
		return true
	}
	return false
}

// knownTarget reports whether name is a target extension iptables ships.
// Chains may not be given these names.
func knownTarget(name string) bool {
	if IsVerdict(name) || knownTargetOptions(name) {
		return true
	}
	switch name {
	case "CHECKSUM", "CLASSIFY", "CONNSECMARK", "SECMARK", "DSCP", "TOS", "TTL", "HL", "ECN",
		"AUDIT", "IDLETIMER", "LED", "RATEEST", "SET", "SYNPROXY", "TEE", "TPROXY", "HMARK",
		"NETMAP", "CLUSTERIP", "TCPOPTSTRIP", "DNPT", "SNPT", "ULOG", "NOTRACK", "TRACE":
		return true
	}
	return false
}

// knownTargetOptions reports whether targetOpt knows the options of target.
func knownTargetOptions(target string) bool {
	switch target {
	case "REJECT", "DNAT", "SNAT", "MASQUERADE", "REDIRECT", "MARK", "CONNMARK", "LOG",
		"NFLOG", "CT", "NFQUEUE", "TCPMSS":
		return true
	}
	return false
}

// targetTable names the only table a target may be used in ("" if any).
func targetTable(target string) string {
	switch target {
	case "DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP":
		return "nat"
	case "CT", "NOTRACK":
		return "raw"
	case "TPROXY":
		return "mangle"
	}
	return ""
}

// targetOpt describes an option of a target extension.
func targetOpt(target, name string) (optDef, bool) {
	switch target {
	case "REJECT":
		if name == "--reject-with" {
			return def(name, 1, false)
		}
	case "DNAT":
		switch name {
		case "--to-destination":
			return def(name, 1, false)
		case "--random", "--persistent":
			return def(name, 0, false)
		}
	case "SNAT":
		switch name {
		case "--to-source":
			return def(name, 1, false)
		case "--random", "--random-fully", "--persistent":
			return def(name, 0, false)
		}
	case "MASQUERADE":
		switch name {
		case "--to-ports":
			return def(name, 1, false)
		case "--random", "--random-fully":
			return def(name, 0, false)
		}
	case "REDIRECT":
		switch name {
		case "--to-ports":
			return def(name, 1, false)
		case "--random":
			return def(name, 0, false)
		}
	case "MARK":
		switch name {
		case "--set-xmark", "--set-mark", "--and-mark", "--or-mark", "--xor-mark":
			return def(name, 1, false)
		}
	case "CONNMARK":
		switch name {
		case "--set-xmark", "--set-mark", "--and-mark", "--or-mark", "--xor-mark",
			"--nfmask", "--ctmask", "--mask":
			return def(name, 1, false)
		case "--save-mark", "--restore-mark":
			return def(name, 0, false)
		}
	case "LOG":
		switch name {
		case "--log-level", "--log-prefix":
			return def(name, 1, false)
		case "--log-tcp-sequence", "--log-tcp-options", "--log-ip-options", "--log-uid", "--log-macdecode":
			return def(name, 0, false)
		}
	case "NFLOG":
		switch name {
		case "--nflog-group", "--nflog-prefix", "--nflog-range", "--nflog-size", "--nflog-threshold":
			return def(name, 1, false)
		}
	case "CT":
		switch name {
		case "--notrack":
			return def(name, 0, false)
		case "--helper", "--ctevents", "--expevents", "--zone", "--zone-orig", "--zone-reply", "--timeout":
			return def(name, 1, false)
		}
	case "NFQUEUE":
		switch name {
		case "--queue-num", "--queue-balance":
			return def(name, 1, false)
		case "--queue-bypass", "--fail-open", "--queue-cpu-fanout":
			return def(name, 0, false)
		}
	case "TCPMSS":
		switch name {
		case "--set-mss":
			return def(name, 1, false)
		case "--clamp-mss-to-pmtu":
			return def(name, 0, false)
		}
	}
	return optDef{}, false
}

// protoModule is the match extension that "-p proto" loads implicitly.
func protoModule(proto string) string {
	switch proto {
	case "tcp", "6":
		return "tcp"
	case "udp", "17":
		return "udp"
	case "sctp", "132":
		return "sctp"
	case "icmp", "1":
		return "icmp"
	case "icmpv6", "ipv6-icmp", "58":
		return "icmp6"
	}
	return ""
}

// ProtocolNumber returns the IP protocol number of a -p value (a name or a
// number); ok is false for names iptables would not know. "all" is 0.
func ProtocolNumber(proto string) (n int, ok bool) {
	switch proto {
	case "all":
		return 0, true
	case "icmp":
		return 1, true
	case "igmp":
		return 2, true
	case "tcp":
		return 6, true
	case "udp":
		return 17, true
	case "gre":
		return 47, true
	case "esp":
		return 50, true
	case "ah":
		return 51, true
	case "icmpv6", "ipv6-icmp":
		return 58, true
	case "sctp":
		return 132, true
	case "udplite":
		return 136, true
	case "dccp":
		return 33, true
	case "mh", "ipv6-mh":
		return 135, true
	}
	n = 0
	if proto == "" || len(proto) > 3 {
		return 0, false
	}
	for i := 0; i < len(proto); i++ {
		if proto[i] < '0' || proto[i] > '9' {
			return 0, false
		}
		n = n*10 + int(proto[i]-'0')
	}
	return n, n <= 255
}
