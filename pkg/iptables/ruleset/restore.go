package ruleset

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// maxChainNameLen is the longest chain name the kernel accepts
// (XT_EXTENSION_MAXNAMELEN - 1).
const maxChainNameLen = 28

// Restore applies an iptables-restore payload with iptables-restore's
// semantics:
//
//   - "*table" starts a table; without noflush the table's rules and
//     user-defined chains are deleted first (built-in policies are kept).
//   - ":CHAIN POLICY [p:b]" creates a user-defined chain, or flushes it if
//     it exists; for a built-in chain it sets the policy ("-" keeps it).
//   - -A, -I (with an optional position), -D (by rule or number), -R, -C,
//     -N, -X (with or without a chain), -F, -Z, -P and -E work as the
//     iptables commands do; the long option names are accepted too.
//     "[packets:bytes]" before a command is accepted and ignored.
//   - "COMMIT" commits the table. Each table is a transaction of its own,
//     as in iptables-restore and iptables-nft-restore: a failure leaves the
//     failing table as it was, while tables committed earlier in the
//     payload stay committed.
//
// Jumps must name an existing user-defined chain or a target extension,
// a chain that rules still jump to cannot be deleted, and a table whose
// jumps form a loop does not commit. Errors are *LineError values naming
// the 1-based payload line, wrapping the Err* values of this package.
func (rs *Ruleset) Restore(payload []byte, noflush bool) error {
	s := string(payload)
	var tx *tx
	lineNo := 0
	for s != "" {
		var line string
		line, s, _ = strings.Cut(s, "\n")
		lineNo++
		trimmed := trimSpace(line)
		if trimmed == "" || trimmed[0] == '#' {
			continue
		}
		var err error
		table := ""
		if tx != nil {
			table = tx.t.name
		}
		switch {
		case tx == nil:
			if trimmed[0] != '*' {
				err = fmt.Errorf("expected a *table line: %w", ErrSyntax)
				break
			}
			table = trimSpace(trimmed[1:])
			if table == "" || strings.ContainsAny(table, " \t") {
				err = fmt.Errorf("bad table name %q: %w", table, ErrSyntax)
				break
			}
			tx, err = rs.begin(table, !noflush)
			if err == nil && tx.fresh {
				// A new or flushed table: size its chain map for the
				// chain lines of the payload.
				tx.grow(strings.Count(s, "\n:") + 1)
			}
		case trimmed == "COMMIT":
			err = tx.commit()
			tx = nil
		case trimmed[0] == '*':
			err = fmt.Errorf("COMMIT expected before a new table: %w", ErrSyntax)
		case trimmed[0] == ':':
			err = tx.chainLine(trimmed[1:])
		default:
			cmd := trimmed
			if cmd[0] == '[' {
				// Counters before the command: "[packets:bytes] -A ...".
				end := strings.IndexByte(cmd, ']')
				if end < 0 || !validCounters(cmd[:end+1]) {
					err = fmt.Errorf("bad counters: %w", ErrSyntax)
					break
				}
				cmd = cmd[end+1:]
			}
			err = tx.run(&lineSource{t: tokenizer{s: cmd}})
		}
		if err != nil {
			return &LineError{Line: lineNo, Table: table, Text: line, Err: err}
		}
	}
	if tx != nil {
		return &LineError{Line: lineNo + 1, Table: tx.t.name, Err: fmt.Errorf("COMMIT expected: %w", ErrSyntax)}
	}
	return nil
}

// Exec runs one iptables command on table, as "iptables -t table args..."
// would (for example Exec("nat", "-I", "OUTPUT", "1", "-j", "KUBE-SERVICES")).
// The table is created if it does not exist yet. The command is atomic: on
// error nothing changes.
func (rs *Ruleset) Exec(table string, args ...string) error {
	tx, err := rs.begin(table, false)
	if err != nil {
		return err
	}
	for _, a := range args {
		if err := checkParam(a); err != nil {
			return err
		}
		if strings.ContainsAny(a, "\n\r") {
			return fmt.Errorf("argument %q contains a line break: %w", a, ErrSyntax)
		}
	}
	if err := tx.run(&sliceSource{args: args}); err != nil {
		return fmt.Errorf("iptables -t %s %s: %w", table, JoinArgs(args), err)
	}
	if err := tx.commit(); err != nil {
		return fmt.Errorf("iptables -t %s %s: %w", table, JoinArgs(args), err)
	}
	return nil
}

func validCounters(s string) bool {
	if len(s) < 5 || s[0] != '[' || s[len(s)-1] != ']' {
		return false
	}
	a, b, ok := strings.Cut(s[1:len(s)-1], ":")
	if !ok {
		return false
	}
	_, err1 := strconv.ParseUint(a, 10, 64)
	_, err2 := strconv.ParseUint(b, 10, 64)
	return err1 == nil && err2 == nil
}

// tx is a transaction on one table: a copy of the table whose chains are
// copied when first changed.
type tx struct {
	rs *Ruleset
	t  *Table
	// token marks the chains this transaction created and may modify.
	token *txToken
	// fresh is set when the table started empty (new or flushed).
	fresh bool
	// refs counts the rules that jump to each user-defined chain; it is
	// built on first use (by -X and -E) and then kept up to date.
	refs map[string]int
	// jumpSources are the ids of the chains that gained jumps to chains,
	// the only places where a loop can have been closed.
	jumpSources []int32
	sp          Spec // scratch
	// last caches the most recently used chain: restore payloads add the
	// rules of a chain one after the other.
	last *Chain
}

func (x *tx) get(name string) *Chain {
	if x.last != nil && x.last.Name == name {
		return x.last
	}
	c := x.t.chains[name]
	if c != nil {
		x.last = c
	}
	return c
}

func (x *tx) put(c *Chain) {
	x.t.chains[c.Name] = c
	x.last = c
}

func (x *tx) del(name string) {
	delete(x.t.chains, name)
	if x.last != nil && x.last.Name == name {
		x.last = nil
	}
}

// txToken identifies a transaction; it is never empty so that every
// transaction gets a distinct address.
type txToken struct{ _ byte }

func (rs *Ruleset) begin(name string, flush bool) (*tx, error) {
	old := rs.Table(name)
	x := &tx{rs: rs, token: &txToken{}}
	switch {
	case old == nil:
		t, err := newTable(name)
		if err != nil {
			return nil, err
		}
		x.t, x.fresh = t, true
	case flush:
		x.t = &Table{name: name, chains: make(map[string]*Chain), nextID: old.nextID}
		x.fresh = true
		for n, c := range old.chains {
			if c.Builtin {
				x.t.chains[n] = &Chain{Name: n, Builtin: true, Policy: c.Policy, owner: x.token, id: c.id}
			}
		}
	default:
		x.t = &Table{name: name, chains: maps.Clone(old.chains), nextID: old.nextID}
	}
	return x, nil
}

// grow makes room for n chains.
func (x *tx) grow(n int) {
	if n <= len(x.t.chains) || n > 1<<22 {
		return
	}
	m := make(map[string]*Chain, n)
	maps.Copy(m, x.t.chains)
	x.t.chains = m
}

func (x *tx) commit() error {
	if len(x.jumpSources) > 0 {
		if err := checkLoops(x.t, x.jumpSources); err != nil {
			return err
		}
	}
	x.rs.setTable(x.t)
	return nil
}

// mut returns a version of c that this transaction may modify.
func (x *tx) mut(c *Chain) *Chain {
	if c.owner == x.token {
		return c
	}
	nc := &Chain{Name: c.Name, Builtin: c.Builtin, Policy: c.Policy, owner: x.token, id: c.id}
	nc.Rules = make([]*Rule, len(c.Rules), len(c.Rules)+8)
	copy(nc.Rules, c.Rules)
	x.put(nc)
	return nc
}

func (x *tx) newChain(name string) {
	x.put(&Chain{Name: name, owner: x.token, id: x.t.nextID})
	x.t.nextID++
}

// references returns the reference counts, building them on first use.
func (x *tx) references() map[string]int {
	if x.refs == nil {
		x.refs = map[string]int{}
		for _, c := range x.t.chains {
			for _, r := range c.Rules {
				if r.jumpChain {
					x.refs[r.target]++
				}
			}
		}
	}
	return x.refs
}

func (x *tx) ref(r *Rule, delta int) {
	if !r.jumpChain || x.refs == nil {
		return
	}
	n := x.refs[r.target] + delta
	if n <= 0 {
		delete(x.refs, r.target)
	} else {
		x.refs[r.target] = n
	}
}

func (x *tx) flush(c *Chain) {
	if x.refs != nil {
		for _, r := range c.Rules {
			x.ref(r, -1)
		}
	}
	x.put(&Chain{Name: c.Name, Builtin: c.Builtin, Policy: c.Policy, owner: x.token, id: c.id})
}

func (x *tx) chain(name string) (*Chain, error) {
	c := x.get(name)
	if c == nil {
		return nil, fmt.Errorf("chain %q: %w", name, ErrNoChain)
	}
	return c, nil
}

func validChainName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty chain name: %w", ErrSyntax)
	case len(name) > maxChainNameLen:
		return fmt.Errorf("chain name %q is longer than %d characters: %w", name, maxChainNameLen, ErrSyntax)
	case name[0] == '-' || name[0] == '!':
		return fmt.Errorf("invalid chain name %q: %w", name, ErrSyntax)
	case strings.ContainsAny(name, " \t\n\r\"'"):
		return fmt.Errorf("invalid chain name %q: %w", name, ErrSyntax)
	case knownTarget(name):
		return fmt.Errorf("chain name %q clashes with a target name: %w", name, ErrSyntax)
	}
	return nil
}

// chainLine handles ":CHAIN POLICY [packets:bytes]".
func (x *tx) chainLine(s string) error {
	fields := strings.FieldsFunc(s, func(r rune) bool { return r < 0x80 && isSpace(byte(r)) })
	if len(fields) < 2 || len(fields) > 3 {
		return fmt.Errorf("bad chain line: %w", ErrSyntax)
	}
	name, policy := fields[0], fields[1]
	if len(fields) == 3 && !validCounters(fields[2]) {
		return fmt.Errorf("bad counters %q: %w", fields[2], ErrSyntax)
	}
	c := x.get(name)
	if c != nil && c.Builtin {
		switch policy {
		case "-":
		case TargetAccept, TargetDrop:
			if c.Policy != policy {
				x.mut(c).Policy = policy
			}
		default:
			return fmt.Errorf("bad policy %q for chain %q: %w", policy, name, ErrSyntax)
		}
		return nil
	}
	if policy != "-" {
		return fmt.Errorf("can't set policy %q on chain %q: %w", policy, name, ErrNoPolicy)
	}
	if c != nil {
		x.flush(c)
		return nil
	}
	if err := validChainName(name); err != nil {
		return err
	}
	x.newChain(name)
	return nil
}

// tokenSource yields the arguments of one command.
type tokenSource interface {
	// next returns the next argument; ok is false at the end.
	next() (tok string, ok bool, err error)
	// peek returns the next argument without consuming it.
	peek() (tok string, ok bool, err error)
	// rule returns the remaining arguments and their text.
	rule() (args []string, text string, err error)
}

type lineSource struct{ t tokenizer }

func (s *lineSource) next() (string, bool, error) { return s.t.next() }

func (s *lineSource) peek() (string, bool, error) {
	save := s.t
	tok, ok, err := s.t.next()
	s.t = save
	return tok, ok, err
}

func (s *lineSource) rule() ([]string, string, error) {
	// Copy the text so that rules do not keep the whole payload alive, and
	// tokenize the copy so that the arguments point into it.
	text := strings.Clone(s.t.rest())
	s.t = tokenizer{s: ""}
	var scratch [64]string
	args, err := tokenizeAppend(scratch[:0], text)
	if err != nil {
		return nil, "", err
	}
	return slices.Clone(args), text, nil
}

type sliceSource struct {
	args []string
	i    int
}

func (s *sliceSource) next() (string, bool, error) {
	if s.i >= len(s.args) {
		return "", false, nil
	}
	s.i++
	return s.args[s.i-1], true, nil
}

func (s *sliceSource) peek() (string, bool, error) {
	if s.i >= len(s.args) {
		return "", false, nil
	}
	return s.args[s.i], true, nil
}

func (s *sliceSource) rule() ([]string, string, error) {
	args := slices.Clone(s.args[s.i:])
	s.i = len(s.args)
	return args, JoinArgs(args), nil
}

// command names, canonical and long.
func canonicalCommand(c string) string {
	switch c {
	case "-A", "--append":
		return "-A"
	case "-I", "--insert":
		return "-I"
	case "-D", "--delete":
		return "-D"
	case "-R", "--replace":
		return "-R"
	case "-C", "--check":
		return "-C"
	case "-N", "--new-chain", "--new":
		return "-N"
	case "-X", "--delete-chain":
		return "-X"
	case "-F", "--flush":
		return "-F"
	case "-Z", "--zero":
		return "-Z"
	case "-P", "--policy":
		return "-P"
	case "-E", "--rename-chain":
		return "-E"
	}
	return ""
}

// isWord reports whether a token is an argument rather than an option.
func isWord(tok string) bool {
	return tok != "" && tok[0] != '-' && tok != "!"
}

func parseRuleNumber(tok string) (int, error) {
	n, err := strconv.Atoi(tok)
	if err != nil || n < 1 || tok[0] == '+' {
		return 0, fmt.Errorf("invalid rule number %q: %w", tok, ErrSyntax)
	}
	return n, nil
}

// run reads one command from src and applies it.
func (x *tx) run(src tokenSource) error {
	tok, ok, err := src.next()
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("no command given: %w", ErrSyntax)
	}
	cmd := canonicalCommand(tok)
	if cmd == "" {
		return fmt.Errorf("unknown or unsupported command %q: %w", tok, ErrSyntax)
	}
	chain, hasChain, err := src.next()
	if err != nil {
		return err
	}
	if hasChain && !isWord(chain) {
		return fmt.Errorf("%s: bad chain name %q: %w", cmd, chain, ErrSyntax)
	}
	switch cmd {
	case "-X", "-F", "-Z":
	default:
		if !hasChain {
			return fmt.Errorf("%s needs a chain: %w", cmd, ErrSyntax)
		}
	}
	switch cmd {
	case "-A", "-I", "-R", "-D", "-C":
		return x.runRule(cmd, chain, src)
	}
	// The remaining commands take at most one more argument.
	arg, hasArg, err := src.next()
	if err != nil {
		return err
	}
	if extra, more, _ := src.next(); more {
		return fmt.Errorf("%s: unexpected argument %q: %w", cmd, extra, ErrSyntax)
	}
	switch cmd {
	case "-P", "-E":
		if !hasArg {
			return fmt.Errorf("%s needs two arguments: %w", cmd, ErrSyntax)
		}
	default:
		if hasArg {
			return fmt.Errorf("%s: unexpected argument %q: %w", cmd, arg, ErrSyntax)
		}
	}
	return x.runChainCommand(cmd, chain, hasChain, arg)
}

// runRule runs a command on one rule of chain (-A, -I, -R, -D, -C): an
// optional rule number, then the rule.
func (x *tx) runRule(cmd, chain string, src tokenSource) error {
	num := 0
	next, ok, err := src.peek()
	if err != nil {
		return err
	}
	if cmd != "-A" && cmd != "-C" && ok && isWord(next) {
		_, _, _ = src.next()
		if num, err = parseRuleNumber(next); err != nil {
			return err
		}
	}
	if cmd == "-R" && num == 0 {
		return fmt.Errorf("-R needs a rule number: %w", ErrSyntax)
	}
	args, text, err := src.rule()
	if err != nil {
		return err
	}
	if cmd == "-D" && num > 0 {
		if len(args) > 0 {
			return fmt.Errorf("-D with a rule number takes no rule: %w", ErrSyntax)
		}
		return x.deleteRuleNum(chain, num)
	}
	return x.ruleCommand(cmd, chain, num, args, text)
}

// runChainCommand runs a command on a chain (or, for -X, -F and -Z
// without one, on every chain): -N, -X, -F, -Z, -P, -E.
func (x *tx) runChainCommand(cmd, chain string, hasChain bool, arg string) error {
	switch cmd {
	case "-N":
		if x.get(chain) != nil {
			return fmt.Errorf("chain %q: %w", chain, ErrChainExists)
		}
		if err := validChainName(chain); err != nil {
			return err
		}
		x.newChain(chain)
		return nil
	case "-X":
		if !hasChain {
			return x.deleteAllChains()
		}
		return x.deleteChain(chain)
	case "-F":
		if !hasChain {
			for _, c := range x.t.chains {
				if len(c.Rules) > 0 {
					x.flush(c)
				}
			}
			return nil
		}
		c, err := x.chain(chain)
		if err != nil {
			return err
		}
		x.flush(c)
		return nil
	case "-Z":
		if hasChain {
			_, err := x.chain(chain)
			return err
		}
		return nil
	case "-P":
		c, err := x.chain(chain)
		if err != nil {
			return err
		}
		if !c.Builtin {
			return fmt.Errorf("can't set policy %q on chain %q: %w", arg, chain, ErrNoPolicy)
		}
		if arg != TargetAccept && arg != TargetDrop {
			return fmt.Errorf("bad policy %q: %w", arg, ErrSyntax)
		}
		x.mut(c).Policy = arg
		return nil
	case "-E":
		return x.renameChain(chain, arg)
	}
	return fmt.Errorf("unsupported command %q: %w", cmd, ErrSyntax)
}

// makeRule validates args and resolves its target in this table.
func (x *tx) makeRule(args []string, text string) (*Rule, error) {
	sp := &x.sp
	if err := parseSpec(sp, args, x.rs.opts); err != nil {
		return nil, err
	}
	r := &Rule{Args: args, Text: text, target: sp.Target, isGoto: sp.Goto}
	if sp.Target == "" {
		return r, nil
	}
	if c := x.get(sp.Target); c != nil {
		if c.Builtin {
			return nil, fmt.Errorf("cannot jump to built-in chain %q: %w", sp.Target, ErrNoChain)
		}
		r.jumpChain, r.targetID = true, c.id
		return r, nil
	}
	switch {
	case sp.Goto:
		return nil, fmt.Errorf("goto target %q is not a chain: %w", sp.Target, ErrNoChain)
	case knownTarget(sp.Target):
		if want := targetTable(sp.Target); want != "" && want != x.t.name {
			return nil, fmt.Errorf("target %s is only valid in the %s table: %w", sp.Target, want, ErrSyntax)
		}
	case !x.rs.opts.Strict && isExtensionName(sp.Target):
		// Lenient: a target extension this package does not know.
	default:
		return nil, fmt.Errorf("couldn't load target %q: %w", sp.Target, ErrNoChain)
	}
	return r, nil
}

// isExtensionName reports whether name looks like a target extension
// (which are all upper case) rather than a chain.
func isExtensionName(name string) bool {
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return name != ""
}

func (x *tx) ruleCommand(cmd, chain string, num int, args []string, text string) error {
	c, err := x.chain(chain)
	if err != nil {
		return err
	}
	if cmd == "-C" || cmd == "-D" {
		if err := parseSpec(&x.sp, args, x.rs.opts); err != nil {
			return err
		}
		i := c.find(x.sp.key())
		if i < 0 {
			return fmt.Errorf("chain %q: %w", chain, ErrNoRule)
		}
		if cmd == "-D" {
			x.removeRule(c, i)
		}
		return nil
	}
	r, err := x.makeRule(args, text)
	if err != nil {
		return err
	}
	switch cmd {
	case "-A":
		c = x.mut(c)
		c.Rules = append(c.Rules, r)
	case "-I":
		if num == 0 {
			num = 1
		}
		if num > len(c.Rules)+1 {
			return fmt.Errorf("index of insertion %d too big: %w", num, ErrNoRule)
		}
		c = x.mut(c)
		c.Rules = slices.Insert(c.Rules, num-1, r)
	case "-R":
		if num > len(c.Rules) {
			return fmt.Errorf("rule %d of chain %q: %w", num, chain, ErrNoRule)
		}
		c = x.mut(c)
		x.ref(c.Rules[num-1], -1)
		c.Rules[num-1] = r
	}
	x.ref(r, +1)
	if r.jumpChain {
		if n := len(x.jumpSources); n == 0 || x.jumpSources[n-1] != c.id {
			x.jumpSources = append(x.jumpSources, c.id)
		}
	}
	return nil
}

func (x *tx) removeRule(c *Chain, i int) {
	c = x.mut(c)
	x.ref(c.Rules[i], -1)
	c.Rules = slices.Delete(c.Rules, i, i+1)
}

func (x *tx) deleteRuleNum(chain string, num int) error {
	c, err := x.chain(chain)
	if err != nil {
		return err
	}
	if num > len(c.Rules) {
		return fmt.Errorf("rule %d of chain %q: %w", num, chain, ErrNoRule)
	}
	x.removeRule(c, num-1)
	return nil
}

func (x *tx) deleteChain(name string) error {
	c, err := x.chain(name)
	if err != nil {
		return err
	}
	switch {
	case c.Builtin:
		return fmt.Errorf("chain %q: %w", name, ErrBuiltinChain)
	case x.references()[name] > 0:
		return fmt.Errorf("chain %q (%d references): %w", name, x.refs[name], ErrChainInUse)
	case len(c.Rules) > 0:
		return fmt.Errorf("chain %q (%d rules): %w", name, len(c.Rules), ErrChainNotEmpty)
	}
	x.del(name)
	delete(x.refs, name)
	return nil
}

// deleteAllChains handles -X without a chain: every user-defined chain is
// deleted, which needs all of them to be empty and unreferenced.
func (x *tx) deleteAllChains() error {
	names := make([]string, 0, len(x.t.chains))
	for name, c := range x.t.chains {
		if !c.Builtin {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		if n := len(x.get(name).Rules); n > 0 {
			return fmt.Errorf("chain %q (%d rules): %w", name, n, ErrChainNotEmpty)
		}
	}
	for _, name := range names {
		if err := x.deleteChain(name); err != nil {
			return err
		}
	}
	return nil
}

func (x *tx) renameChain(oldName, newName string) error {
	c, err := x.chain(oldName)
	if err != nil {
		return err
	}
	if c.Builtin {
		return fmt.Errorf("chain %q: %w", oldName, ErrBuiltinChain)
	}
	if x.get(newName) != nil {
		return fmt.Errorf("chain %q: %w", newName, ErrChainExists)
	}
	if err := validChainName(newName); err != nil {
		return err
	}
	refs := x.references()
	nc := &Chain{Name: newName, Rules: slices.Clone(c.Rules), owner: x.token, id: c.id}
	x.del(oldName)
	x.put(nc)
	if n := refs[oldName]; n > 0 {
		refs[newName] = n
		delete(refs, oldName)
	}
	// Rules follow the renamed chain, as they do in the kernel.
	for _, ch := range x.t.chains {
		for i, r := range ch.Rules {
			if !r.jumpChain || r.target != oldName {
				continue
			}
			sp := &Spec{}
			if err := parseSpec(sp, r.Args, Options{}); err != nil || sp.targetIndex < 0 {
				return errors.Join(fmt.Errorf("cannot rewrite rule %q", r.Text), err)
			}
			args := slices.Clone(r.Args)
			args[sp.targetIndex] = newName
			nr := *r
			nr.Args, nr.Text, nr.target = args, JoinArgs(args), newName
			x.mut(ch).Rules[i] = &nr
		}
	}
	return nil
}

// checkLoops reports jumps that form a loop, which the kernel rejects. The
// table was loop-free before the transaction, so a loop must pass through
// one of the chains that gained jumps: searching from those is enough.
func checkLoops(t *Table, sources []int32) error {
	const (
		unvisited = iota
		active
		done
	)
	byID := make([]*Chain, t.nextID)
	for _, c := range t.chains {
		byID[c.id] = c
	}
	state := make([]uint8, t.nextID)
	type frame struct {
		chain *Chain
		next  int
	}
	var stack []frame
	for _, id := range sources {
		start := byID[id]
		if start == nil || state[id] != unvisited {
			continue
		}
		state[start.id] = active
		stack = append(stack[:0], frame{chain: start})
		for len(stack) > 0 {
			f := &stack[len(stack)-1]
			if f.next >= len(f.chain.Rules) {
				state[f.chain.id] = done
				stack = stack[:len(stack)-1]
				continue
			}
			r := f.chain.Rules[f.next]
			f.next++
			if !r.jumpChain {
				continue
			}
			c := byID[r.targetID]
			if c == nil {
				continue
			}
			switch state[c.id] {
			case active:
				return fmt.Errorf("chain %q jumps back to %q: %w", f.chain.Name, r.target, ErrLoop)
			case unvisited:
				state[c.id] = active
				stack = append(stack, frame{chain: c})
			}
		}
	}
	return nil
}
