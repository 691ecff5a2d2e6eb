package ruleset

import (
	"errors"
	"fmt"
	"strings"
)

// maxParamLen is the longest single argument iptables-restore accepts.
const maxParamLen = 1023

// errTableOption is returned for a "-t" argument inside a restore payload.
var errTableOption = errors.New("the -t option cannot be used in iptables-restore")

// tokenizer splits one line into arguments the way iptables-restore does
// (add_param_to_argv in xtables): arguments are separated by spaces and
// tabs; a double quote opens a quoted part in which spaces are kept and a
// backslash escapes the next character; a closing quote ends the argument.
// Outside quotes, a backslash is an ordinary character. Unescaped arguments
// are substrings of the input, so tokenizing allocates only for the rare
// argument that mixes quoted and unquoted parts or contains escapes.
type tokenizer struct {
	s string
	i int
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// next returns the next argument; ok is false at the end of the line.
func (t *tokenizer) next() (tok string, ok bool, err error) {
	s := t.s
	i := t.i
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	if i >= len(s) {
		t.i = i
		return "", false, nil
	}
	start := i
	var b *strings.Builder
	for i < len(s) {
		c := s[i]
		if isSpace(c) {
			break
		}
		if c != '"' {
			if b != nil {
				b.WriteByte(c)
			}
			i++
			continue
		}
		// A quoted part: it runs to the next unescaped quote (or the end
		// of the line) and ends the argument.
		j := i + 1
		escaped := false
		for j < len(s) && s[j] != '"' {
			if s[j] == '\\' {
				escaped = true
				j++
			}
			j++
		}
		if j > len(s) {
			j = len(s)
		}
		if b == nil && i == start && !escaped {
			tok = s[i+1 : j]
		} else {
			if b == nil {
				b = &strings.Builder{}
				b.WriteString(s[start:i])
			}
			unescapeInto(b, s[i+1:j])
			tok = b.String()
		}
		if j < len(s) {
			j++ // the closing quote
		}
		t.i = j
		return tok, true, checkParam(tok)
	}
	if b != nil {
		tok = b.String()
	} else {
		tok = s[start:i]
	}
	t.i = i
	return tok, true, checkParam(tok)
}

// rest returns the unconsumed remainder of the line, without leading or
// trailing white space.
func (t *tokenizer) rest() string {
	return trimSpace(t.s[t.i:])
}

// trimSpace trims the white space the tokenizer separates arguments with.
func trimSpace(s string) string {
	i, j := 0, len(s)
	for i < j && isSpace(s[i]) {
		i++
	}
	for j > i && isSpace(s[j-1]) {
		j--
	}
	return s[i:j]
}

func unescapeInto(b *strings.Builder, q string) {
	for k := 0; k < len(q); k++ {
		if q[k] == '\\' && k+1 < len(q) {
			k++
		}
		b.WriteByte(q[k])
	}
}

// checkParam applies the checks iptables-restore makes on every argument.
func checkParam(p string) error {
	if len(p) > maxParamLen {
		return fmt.Errorf("parameter too long (%d bytes, at most %d): %w", len(p), maxParamLen, ErrSyntax)
	}
	// iptables-restore refuses anything that looks like a -t option
	// (including option clusters such as "-nt" and abbreviations of
	// "--table"), because the table is given by the *table line.
	if len(p) >= 2 && p[0] == '-' && p[1] != '-' && strings.IndexByte(p, 't') >= 0 {
		return fmt.Errorf("%q: %w", p, errTableOption)
	}
	if len(p) >= 3 && strings.HasPrefix("--table", p) && strings.HasPrefix(p, "--t") {
		return fmt.Errorf("%q: %w", p, errTableOption)
	}
	return nil
}

// Tokenize splits the arguments of one iptables-restore line the way
// iptables-restore does: double-quoted parts are kept together (without the
// quotes, with backslash escapes resolved inside them) and "!" is an
// argument of its own. It rejects what iptables-restore rejects while
// splitting: over-long arguments and "-t".
func Tokenize(line string) ([]string, error) {
	return tokenizeAppend(nil, line)
}

func tokenizeAppend(dst []string, line string) ([]string, error) {
	t := tokenizer{s: line}
	for {
		tok, ok, err := t.next()
		if err != nil {
			return dst, err
		}
		if !ok {
			return dst, nil
		}
		dst = append(dst, tok)
	}
}

// Quote returns arg written so that Tokenize reads it back as one argument:
// unchanged when that is already the case, otherwise in double quotes with
// quotes and backslashes escaped.
func Quote(arg string) string {
	if arg != "" && !strings.ContainsAny(arg, " \t\n\r\"") {
		return arg
	}
	var b strings.Builder
	b.Grow(len(arg) + 2)
	b.WriteByte('"')
	for i := 0; i < len(arg); i++ {
		if arg[i] == '"' || arg[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(arg[i])
	}
	b.WriteByte('"')
	return b.String()
}

// JoinArgs renders args as one line that Tokenize splits back into args.
func JoinArgs(args []string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(Quote(a))
	}
	return b.String()
}
