// Command etcd is etcd's server built from the Go module proxy at a pinned
// release, for the end-to-end harness's local control plane.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
