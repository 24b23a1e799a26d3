// Package controlpb is the generated protobuf and gRPC code of mixvpnd's
// control API; control.proto is its source and `make proto` regenerates it.
package controlpb
