//go:build tools

// Package tools pins the Istio commands the test cluster builds from this module:
// istiod (pilot-discovery) and istioctl, both of the Istio 1.31 line.
package tools

import (
	_ "istio.io/istio/istioctl/cmd/istioctl"
	_ "istio.io/istio/pilot/cmd/pilot-discovery"
)
