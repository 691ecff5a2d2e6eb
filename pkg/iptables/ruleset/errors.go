package ruleset

import (
	"errors"
	"fmt"
)

// Errors that restore and command failures wrap; test for them with
// errors.Is. The messages follow iptables' own where it has one.
var (
	// ErrSyntax reports input that iptables-restore cannot parse: a bad
	// table, chain or rule line, an unknown option or a missing argument.
	ErrSyntax = errors.New("syntax error")
	// ErrNoTable reports a table the kernel does not have.
	ErrNoTable = errors.New("table does not exist")
	// ErrNoChain reports a chain (or a jump target) that does not exist.
	ErrNoChain = errors.New("no chain/target/match by that name")
	// ErrChainExists reports -N for a chain that already exists.
	ErrChainExists = errors.New("chain already exists")
	// ErrChainInUse reports -X for a chain that rules still jump to.
	ErrChainInUse = errors.New("chain is referenced by rules (too many links)")
	// ErrChainNotEmpty reports -X for a chain that still has rules.
	ErrChainNotEmpty = errors.New("chain is not empty (directory not empty)")
	// ErrBuiltinChain reports an operation that built-in chains do not
	// support (deleting, renaming).
	ErrBuiltinChain = errors.New("not allowed on a built-in chain")
	// ErrNoPolicy reports a policy given for a user-defined chain.
	ErrNoPolicy = errors.New("user-defined chains have no policy")
	// ErrNoRule reports -D or -C for a rule that is not in the chain, or a
	// rule number that is out of range.
	ErrNoRule = errors.New("bad rule (does a matching rule exist in that chain?)")
	// ErrLoop reports jumps that form a loop, which the kernel refuses when
	// the table is committed.
	ErrLoop = errors.New("jumps form a loop (too many levels of symbolic links)")
	// ErrFamily reports an address of the wrong IP family for the ruleset.
	ErrFamily = errors.New("address of the wrong IP family")
)

// LineError is the error of a failed Restore. It names the 1-based line of
// the payload that failed, like iptables-restore's "line N failed", so that
// callers can show the lines around it.
type LineError struct {
	// Line is the 1-based number of the failing line in the payload. For a
	// payload that ends inside a table it is one past the last line (where
	// COMMIT was expected); for a loop detected at commit time it is the
	// COMMIT line.
	Line int
	// Table is the table being restored, if any.
	Table string
	// Text is the failing line ("" past the end of the payload).
	Text string
	// Err is the cause.
	Err error
}

// Error implements error.
func (e *LineError) Error() string {
	if e.Text == "" {
		return fmt.Sprintf("line %d failed: %v", e.Line, e.Err)
	}
	return fmt.Sprintf("line %d failed: %v (%q)", e.Line, e.Err, e.Text)
}

// Unwrap returns the cause.
func (e *LineError) Unwrap() error { return e.Err }
