//go:build tools

// Package tools records the control-plane commands this module builds, so that
// `go mod tidy` keeps their dependencies pinned in go.mod and go.sum.
package tools

import (
	_ "go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
