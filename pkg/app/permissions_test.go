package app

import (
	"context"
	"errors"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestCheckPermissions(t *testing.T) {
	ssar := schema.GroupResource{Group: "authorization.k8s.io", Resource: "selfsubjectaccessreviews"}
	tests := []struct {
		name string
		// allow decides each review; nil answers every review with err.
		allow func(a *authorizationv1.ResourceAttributes) bool
		err   error
		// wantDenied are the permissions the error must name; nil means
		// no error.
		wantDenied []string
	}{
		{
			name:  "everything allowed",
			allow: func(*authorizationv1.ResourceAttributes) bool { return true },
		},
		{
			name:  "no binding at all",
			allow: func(*authorizationv1.ResourceAttributes) bool { return false },
			wantDenied: []string{"list services", "watch services", "list endpointslices.discovery.k8s.io",
				"watch endpointslices.discovery.k8s.io", "get nodes/node-1", "list nodes", "watch nodes"},
		},
		{
			name:       "only EndpointSlices missing",
			allow:      func(a *authorizationv1.ResourceAttributes) bool { return a.Resource != "endpointslices" },
			wantDenied: []string{"list endpointslices.discovery.k8s.io", "watch endpointslices.discovery.k8s.io"},
		},
		{
			name:  "events missing only degrades",
			allow: func(a *authorizationv1.ResourceAttributes) bool { return a.Resource != "events" },
		},
		{
			name: "reviews forbidden: no verdict, the informers' retries take over",
			err:  apierrors.NewForbidden(ssar, "", errors.New("no")),
		},
		{
			name: "API server unreachable: no verdict",
			err:  errors.New("connection refused"),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset()
			client.PrependReactor("create", "selfsubjectaccessreviews", func(action k8stesting.Action) (bool, runtime.Object, error) {
				if tc.allow == nil {
					return true, nil, tc.err
				}
				r := action.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview).DeepCopy()
				r.Status.Allowed = tc.allow(r.Spec.ResourceAttributes)
				return true, r, nil
			})
			client.PrependReactor("create", "selfsubjectreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
				r := &authenticationv1.SelfSubjectReview{}
				r.Status.UserInfo.Username = "system:serviceaccount:kube-system:nobody"
				return true, r, nil
			})
			err := checkPermissions(context.Background(), client, "node-1")
			if tc.wantDenied == nil {
				if err != nil {
					t.Fatalf("checkPermissions: %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrMissingPermissions) {
				t.Fatalf("checkPermissions: %v, want ErrMissingPermissions", err)
			}
			msg := err.Error()
			for _, d := range tc.wantDenied {
				if !strings.Contains(msg, d) {
					t.Errorf("error %q does not name %q", msg, d)
				}
			}
			if !strings.Contains(msg, "system:serviceaccount:kube-system:nobody") {
				t.Errorf("error %q does not name the user", msg)
			}
			if strings.Contains(msg, "events") {
				t.Errorf("error %q names events, which are optional", msg)
			}
			if n := strings.Count(msg, ", ") + 1; n != len(tc.wantDenied) {
				t.Errorf("error %q names %d permissions, want %d", msg, n, len(tc.wantDenied))
			}
		})
	}
}
