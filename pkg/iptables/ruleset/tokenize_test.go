package ruleset

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestTokenize(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		want    []string
		wantErr error
	}{
		{name: "empty", line: "", want: nil},
		{name: "spaces and tabs", line: " -A\tFOO  -j   ACCEPT \t", want: []string{"-A", "FOO", "-j", "ACCEPT"}},
		{name: "negation is its own token", line: "! -s 10.0.0.0/8", want: []string{"!", "-s", "10.0.0.0/8"}},
		{
			name: "quoted comment",
			line: `-m comment --comment "ns1/svc1:p80 cluster IP" -j X`,
			want: []string{"-m", "comment", "--comment", "ns1/svc1:p80 cluster IP", "-j", "X"},
		},
		{name: "escaped quote and backslash", line: `"a \"b\" \\c"`, want: []string{`a "b" \c`}},
		{name: "backslash outside quotes is literal", line: `a\b`, want: []string{`a\b`}},
		{name: "quote in the middle joins, closing quote ends", line: `ab"c d"e f`, want: []string{"abc d", "e", "f"}},
		{name: "empty quotes are an empty argument", line: `--comment ""`, want: []string{"--comment", ""}},
		{name: "unterminated quote runs to the end", line: `--comment "a b`, want: []string{"--comment", "a b"}},
		{name: "-t is refused", line: "-t nat -A FOO", wantErr: errTableOption},
		{name: "option cluster with t is refused", line: "-A FOO -nt", wantErr: errTableOption},
		{name: "--table abbreviation is refused", line: "--tab nat", wantErr: errTableOption},
		{name: "long option with t is fine", line: "--to-destination 10.0.0.1:80", want: []string{"--to-destination", "10.0.0.1:80"}},
		{name: "too long", line: strings.Repeat("x", maxParamLen+1), wantErr: ErrSyntax},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Tokenize(tc.line)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Tokenize(%q) error = %v, want %v", tc.line, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Tokenize(%q): %v", tc.line, err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Tokenize(%q) = %q, want %q", tc.line, got, tc.want)
			}
		})
	}
}

func TestQuoteRoundTrip(t *testing.T) {
	args := [][]string{
		{"-m", "comment", "--comment", "a b"},
		{"--comment", ""},
		{"--comment", `say "hi"`},
		{"--comment", `back\slash and space`},
		{"--comment", `trailing\`},
		{"--comment", "tab\there"},
		{"!", "-s", "10.0.0.0/8"},
	}
	for _, a := range args {
		line := JoinArgs(a)
		got, err := Tokenize(line)
		if err != nil {
			t.Fatalf("Tokenize(%q): %v", line, err)
		}
		if !slices.Equal(got, a) {
			t.Errorf("Tokenize(JoinArgs(%q)) = %q (line %q)", a, got, line)
		}
	}
	if got := Quote("KUBE-SVC-X"); got != "KUBE-SVC-X" {
		t.Errorf("Quote of a plain word = %q", got)
	}
}
