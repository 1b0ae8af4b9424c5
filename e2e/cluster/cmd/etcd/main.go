// Command etcd is the etcd server at exactly the version the pinned Kubernetes
// release requires; etcd's own module cannot be `go install`ed because of its
// local replace directives.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
