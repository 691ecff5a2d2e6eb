package proxier

import (
	"context"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/iptproxy/iptproxy/pkg/iptables"
)

// TestJumpPresent checks that every base-chain jump installed by a full
// sync is recognised in iptables-save output, so that the next full sync
// (a restart) runs no iptables command for it, and that a missing jump is
// not.
func TestJumpPresent(t *testing.T) {
	c := scaleCluster{family: v1.IPv4Protocol, n: 3}
	p, ipt := c.fakeProxier(t)
	ctx := context.Background()
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	base := map[iptables.Table]*iptables.SavedTable{}
	for _, tbl := range []iptables.Table{iptables.TableFilter, iptables.TableNAT} {
		save, err := ipt.Save(ctx, tbl)
		if err != nil {
			t.Fatal(err)
		}
		base[tbl], _ = iptables.ParseSaveTable(tbl, save)
	}
	for _, j := range jumps() {
		if !jumpPresent(base[j.table], j) {
			t.Errorf("jump %s -> %s in %s not recognised in %v", j.from, j.to, j.table, base[j.table])
		}
	}
	if err := ipt.DeleteRule(ctx, iptables.TableNAT, iptables.ChainPrerouting, jumps()[10].args()...); err != nil {
		t.Fatal(err)
	}
	save, _ := ipt.Save(ctx, iptables.TableNAT)
	nat, _ := iptables.ParseSaveTable(iptables.TableNAT, save)
	if j := jumps()[10]; jumpPresent(nat, j) {
		t.Errorf("deleted jump %s -> %s still recognised", j.from, j.to)
	}
}
