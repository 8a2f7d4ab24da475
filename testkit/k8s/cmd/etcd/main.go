// Command etcd is the etcd server of go.etcd.io/etcd/server/v3, built at the version pinned
// in go.mod, for the test control plane only.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
