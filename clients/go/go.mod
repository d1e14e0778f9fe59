// The Go client as a module. Here it builds offline in GOPATH mode from Debian's sources
// (see docs/development/index.md#other-languages), which ignores this file; elsewhere `go mod tidy`, with
// the module proxy in reach, adds the indirect requirements and go.sum. The versions are
// those it is built and tested with here (Debian bookworm's).
module example.com/cutout/clients/go

go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)

// grpc-go's codec marshals through it: 1.4 and later handle APIv2 messages.
require github.com/golang/protobuf v1.5.2 // indirect
