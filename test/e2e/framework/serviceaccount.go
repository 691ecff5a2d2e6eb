package framework

import (
	"context"
	"fmt"
	"path/filepath"

	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ServiceAccount is a ServiceAccount with a bound token and a kubeconfig
// that authenticates with it.
type ServiceAccount struct {
	// Namespace and Name identify the ServiceAccount.
	Namespace, Name string
	// Token is a bound token for it (valid for 24 hours).
	Token string
	// Kubeconfig is the path of a kubeconfig that uses Token.
	Kubeconfig string
	// Config is a client configuration that uses Token; its Dial creates
	// connections inside the host namespace.
	Config *rest.Config
}

// ProxierClusterRole is the bootstrap ClusterRole kube-proxy runs with.
const ProxierClusterRole = "system:node-proxier"

// CreateServiceAccount creates (or reuses) the namespace and the
// ServiceAccount, binds it to each ClusterRole with a ClusterRoleBinding,
// and requests a token for it.
func (c *Cluster) CreateServiceAccount(t T, namespace, name string, clusterRoles ...string) *ServiceAccount {
	t.Helper()
	sa, err := c.createServiceAccount(t.Context(), namespace, name, clusterRoles...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return sa
}

func (c *Cluster) createServiceAccount(ctx context.Context, namespace, name string, clusterRoles ...string) (*ServiceAccount, error) {
	cs := c.Client()
	if err := c.ensureNamespace(ctx, namespace); err != nil {
		return nil, err
	}
	_, err := cs.CoreV1().ServiceAccounts(namespace).Create(ctx, &v1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating ServiceAccount %s/%s: %w", namespace, name, err)
	}
	for _, role := range clusterRoles {
		crb := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("e2e:%s:%s:%s", namespace, name, role)},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: namespace, Name: name}},
		}
		if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("binding %s/%s to %s: %w", namespace, name, role, err)
		}
	}
	expiry := int64(24 * 60 * 60)
	tr, err := cs.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("requesting a token for %s/%s: %w", namespace, name, err)
	}
	token := tr.Status.Token
	path := filepath.Join(c.dir, fmt.Sprintf("sa-%s-%s.kubeconfig", namespace, name))
	user := "system:serviceaccount:" + namespace + ":" + name
	if err := writeKubeconfig(path, c.cp.url, c.cp.caPEM, user, &clientcmdapi.AuthInfo{Token: token}); err != nil {
		return nil, err
	}
	cfg := &rest.Config{
		Host:            c.cp.url,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.cp.caPEM},
		Dial:            c.dialer.DialContext,
		QPS:             200,
		Burst:           400,
		UserAgent:       "iptproxy-e2e",
	}
	return &ServiceAccount{Namespace: namespace, Name: name, Token: token, Kubeconfig: path, Config: cfg}, nil
}

// ensureNamespace creates a namespace unless it exists.
func (c *Cluster) ensureNamespace(ctx context.Context, name string) error {
	_, err := c.Client().CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return nil
}

// CreateNamespace creates a namespace (or reuses an existing one). Namespaces
// are never deleted: without a controller-manager their deletion would not
// finish, and the whole apiserver goes away with the cluster anyway.
func (c *Cluster) CreateNamespace(t T, name string) {
	t.Helper()
	if err := c.ensureNamespace(t.Context(), name); err != nil {
		t.Fatalf("%v", err)
	}
}

// proxyServiceAccount returns the ServiceAccount daemons run as by default:
// kube-system/kube-proxy bound to system:node-proxier, created on first use.
func (c *Cluster) proxyServiceAccount(ctx context.Context) (*ServiceAccount, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proxySA != nil {
		return c.proxySA, nil
	}
	sa, err := c.createServiceAccount(ctx, metav1.NamespaceSystem, "kube-proxy", ProxierClusterRole)
	if err != nil {
		return nil, err
	}
	c.proxySA = sa
	return sa, nil
}
