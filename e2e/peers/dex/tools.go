//go:build tools

// Package tools records the command this module builds, so that `go mod tidy`
// keeps its dependencies pinned in go.mod and go.sum.
package tools

import _ "github.com/dexidp/dex/cmd/dex"
