//go:build tools

// Package tools pins the Go commands that tools/kubecluster builds into a local
// Kubernetes control plane. The blank imports keep `go mod tidy` from dropping
// them; nothing here is compiled into gitopsd.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
