#!/usr/bin/env bash
# Installs the Debian packages that tests/go/build.sh needs to build the Go client offline:
# protoc + the Go code generators, the Go compiler, and the Go sources of grpc-go and protobuf
# (under /usr/share/gocode). Idempotent: does nothing (not even apt-get update) when all are present.
# Called by .ci/run; runs as root (or through sudo where it is available).
set -euo pipefail

packages=(
  golang-go                              # go 1.19 (bookworm)
  protobuf-compiler                      # protoc
  protoc-gen-go                          # google.golang.org/protobuf/cmd/protoc-gen-go 1.28
  protoc-gen-go-grpc                     # protoc-gen-go-grpc 1.0, built from grpc-go 1.33
  golang-google-grpc-dev                 # google.golang.org/grpc 1.33 sources
  golang-google-protobuf-dev             # google.golang.org/protobuf (APIv2) sources: the stubs import it
  golang-github-golang-protobuf-1-5-dev  # github.com/golang/protobuf 1.5: grpc-go's codec, bridged to APIv2
)                                        # (1-5 replaces the 1-3 that grpc-dev would otherwise pull in)

# shellcheck source=apt-packages.sh
source "$(dirname "$0")/apt-packages.sh"
install_packages go-toolchain "${packages[@]}"

echo "go-toolchain: $(go version), $(protoc --version), protoc-gen-go $(protoc-gen-go --version 2>&1 | awk '{print $2}'), protoc-gen-go-grpc $(protoc-gen-go-grpc --version 2>&1 | awk '{print $2}')"
