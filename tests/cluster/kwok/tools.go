//go:build tools

// Package tools pins the node simulator of the test cluster.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
