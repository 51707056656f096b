//go:build tools

// Package tools pins the OCI registry (go-containerregistry's `registry` command)
// that the tests serve charts from on loopback.
package tools

import _ "github.com/google/go-containerregistry/cmd/registry"
