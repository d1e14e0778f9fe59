#!/bin/sh
# Builds the Go smoke program offline from Debian's Go sources (/usr/share/gocode), in GOPATH
# mode: the module proxy is out of reach here, and GOPATH mode needs neither it nor go.sum
# (go.mod is for users who have a proxy). The module's import path is linked into a GOPATH
# under .cache/go. Usage: clients/go/build.sh OUTPUT
set -eu
out=$(realpath -m "$1")
here=$(cd "$(dirname "$0")" && pwd)
cache=$(cd "$here/../.." && pwd)/.cache/go
mkdir -p "$cache/gopath/src/example.com/cutout/clients"
ln -sfn "$here" "$cache/gopath/src/example.com/cutout/clients/go"
cd "$cache/gopath/src/example.com/cutout/clients/go"
GO111MODULE=off GOPATH="$cache/gopath:/usr/share/gocode" GOCACHE="$cache/build" GOFLAGS= GOPROXY=off \
	exec go build -o "$out" ./smoke
