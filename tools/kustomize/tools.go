//go:build tools

// Package tools pins the kustomize command that tools/kustomize/build builds for rendering
// kustomize packs: the same kustomize release that the locked kubectl embeds, as a binary of its
// own that starts in a fraction of kubectl's time. Nothing here is compiled into gitopsd.
package tools

import (
	_ "sigs.k8s.io/kustomize/kustomize/v5"
)
