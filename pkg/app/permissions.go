package app

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
)

// access is one API permission iptproxy uses.
type access struct {
	verb, group, resource, name string
	// required: without it iptproxy cannot serve (its informers would
	// log "forbidden" forever); otherwise only a feature degrades.
	required bool
}

func (a access) String() string {
	res := a.resource
	if a.group != "" {
		res += "." + a.group
	}
	if a.name != "" {
		res += "/" + a.name
	}
	return a.verb + " " + res
}

// neededAccess is what iptproxy does with the API: the Service and
// EndpointSlice informers, its own Node (get at start, then a watch), and
// events. They are a subset of the ClusterRole in deploy/base/rbac.yaml
// and of kube-proxy's system:node-proxier.
func neededAccess(nodeName string) []access {
	return []access{
		{verb: "list", resource: "services", required: true},
		{verb: "watch", resource: "services", required: true},
		{verb: "list", group: "discovery.k8s.io", resource: "endpointslices", required: true},
		{verb: "watch", group: "discovery.k8s.io", resource: "endpointslices", required: true},
		{verb: "get", resource: "nodes", name: nodeName, required: true},
		{verb: "list", resource: "nodes", required: true},
		{verb: "watch", resource: "nodes", required: true},
		{verb: "create", group: "events.k8s.io", resource: "events"},
		{verb: "patch", group: "events.k8s.io", resource: "events"},
	}
}

// permissionCheckTimeout bounds the start-up permission check, so that an
// API server that does not answer delays the start by at most this long.
const permissionCheckTimeout = 30 * time.Second

// ErrMissingPermissions is wrapped by the error checkPermissions returns
// when the API server denies iptproxy something it cannot run without.
var ErrMissingPermissions = errors.New("missing API permissions")

// checkPermissions asks the API server, with one SelfSubjectAccessReview
// per permission, whether iptproxy's credentials may do what it needs. It
// returns an error wrapping ErrMissingPermissions that names every denied
// required permission, so that a missing or wrong RBAC binding is one clear
// line and a non-zero exit (CrashLoopBackOff in a DaemonSet) rather than
// informers retrying "forbidden" forever. Denied optional permissions
// (events) are logged. When the reviews themselves cannot be made (the API
// server is unreachable or does not answer within permissionCheckTimeout,
// or the credentials may not create SelfSubjectAccessReviews), it logs why
// and returns nil: the informers'
// own retries take over, as in kube-proxy.
func checkPermissions(ctx context.Context, client kubernetes.Interface, nodeName string) error {
	logger := klog.FromContext(ctx)
	ctx, cancel := context.WithTimeout(ctx, permissionCheckTimeout)
	defer cancel()
	var denied, degraded []string
	for _, a := range neededAccess(nodeName) {
		review := &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{
				ResourceAttributes: &authorizationv1.ResourceAttributes{
					Verb:     a.verb,
					Group:    a.group,
					Resource: a.resource,
					Name:     a.name,
				},
			},
		}
		got, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
		if err != nil {
			logger.Info("Cannot check API permissions at start; continuing without the check", "reason", err.Error(),
				"forbidden", apierrors.IsForbidden(err))
			return nil
		}
		if got.Status.Allowed {
			continue
		}
		if a.required {
			denied = append(denied, a.String())
		} else {
			degraded = append(degraded, a.String())
		}
	}
	user := selfUser(ctx, client)
	if len(degraded) > 0 {
		logger.Info("Missing optional API permissions; events will not be recorded", "user", user, "denied", degraded)
	}
	if len(denied) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s may not %s; bind it to the ClusterRole iptproxy (deploy/base/rbac.yaml) or system:node-proxier",
		ErrMissingPermissions, user, strings.Join(denied, ", "))
}

// selfUser returns the user name the API server sees for these
// credentials, or "these credentials" when it cannot tell.
func selfUser(ctx context.Context, client kubernetes.Interface) string {
	r, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil || r.Status.UserInfo.Username == "" {
		return "these credentials"
	}
	return fmt.Sprintf("user %q", r.Status.UserInfo.Username)
}
