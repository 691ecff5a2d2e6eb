package app

import (
	"context"
	"fmt"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// servedFamilies returns the IP families to proxy, primary first: the
// primary family must have working iptables tools and kernel support
// (present returns nil), the other is skipped with one log line when it
// has not.
func servedFamilies(ctx context.Context, primary v1.IPFamily, present func(context.Context, v1.IPFamily) error) ([]v1.IPFamily, error) {
	logger := klog.FromContext(ctx)
	var out []v1.IPFamily
	for _, fam := range []v1.IPFamily{primary, otherFamily(primary)} {
		if err := present(ctx, fam); err != nil {
			if fam == primary {
				return nil, fmt.Errorf("no iptables support for the primary IP family %s: %w", fam, err)
			}
			logger.Info("No iptables support for this IP family; serving the other family only", "ipFamily", fam, "reason", err.Error())
			continue
		}
		out = append(out, fam)
	}
	return out, nil
}
