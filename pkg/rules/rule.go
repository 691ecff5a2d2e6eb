package rules

import (
	"fmt"
	"math"
	"strconv"
)

// probability renders 1/n as iptables-save prints the statistic match: the
// kernel keeps it as a 31-bit fixed-point fraction.
// kube-proxy writes 1/n with ten decimals; the kernel rounds that to a
// fraction of 2^31, which is what the tools print back.
func probability(n int) string {
	written, _ := strconv.ParseFloat(fmt.Sprintf("%0.10f", 1.0/float64(n)), 64)
	fixed := math.Round(float64(0x80000000) * written)
	return fmt.Sprintf("%.11f", fixed/float64(0x80000000))
}
