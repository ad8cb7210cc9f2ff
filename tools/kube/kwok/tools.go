//go:build tools

// Package tools pins kwok, which plays kubelet for the fake nodes of a local
// control plane. It is a module of its own because each kwok release is built and
// tested against its own k8s.io/* versions, which differ from the Kubernetes
// release pinned one directory up.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
