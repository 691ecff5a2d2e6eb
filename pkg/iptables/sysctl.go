package iptables

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"k8s.io/klog/v2"
)

// EnsureSysctl sets the sysctl name (dotted, "net.ipv4.conf.all.route_localnet",
// or as a path below /proc/sys, "net/ipv4/conf/all/route_localnet") to value
// unless it already has it, and logs the change. Use the slash form when a
// component contains a dot (an interface such as "eth0.100").
//
// Like the iptables tools, it acts on the network namespace of the calling
// OS thread for net.* keys.
func EnsureSysctl(ctx context.Context, name string, value int) error {
	return ensureSysctl(ctx, "/proc/sys", name, value)
}

func ensureSysctl(ctx context.Context, root, name string, value int) error {
	key := name
	if !strings.Contains(key, "/") {
		key = strings.ReplaceAll(key, ".", "/")
	}
	key = filepath.Clean("/" + key)[1:]
	if key == "" || key == "." {
		return fmt.Errorf("invalid sysctl name %q", name)
	}
	path := filepath.Join(root, key)

	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading sysctl %s: %w", name, err)
	}
	old := strings.TrimSpace(string(raw))
	if cur, err := strconv.Atoi(old); err == nil && cur == value {
		klog.FromContext(ctx).V(4).Info("Sysctl already set", "name", name, "value", value)
		return nil
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(value)+"\n"), 0o640); err != nil {
		return fmt.Errorf("setting sysctl %s to %d: %w", name, value, err)
	}
	klog.FromContext(ctx).Info("Set sysctl", "name", name, "old", old, "value", value)
	return nil
}
