//go:build tools

// Package tools pins istiod (pilot-discovery) of the test cluster.
package tools

import _ "istio.io/istio/pilot/cmd/pilot-discovery"
