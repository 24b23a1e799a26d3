# mixvpn build, test and demo. Every target installs what it needs on a fresh
# Debian machine as root; nothing depends on what someone installed by hand.

GO        ?= go
BIN       := bin
FUZZTIME  ?= 5s
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

# Debian packages: the network tools the end-to-end tests and the local
# network use, and the X11/GL headers Fyne needs for cgo.
NET_PKGS  := iproute2 nftables tcpdump iperf3 wireguard-tools wireguard-go procps iputils-ping
GUI_PKGS  := gcc pkg-config libgl1-mesa-dev libxcursor-dev libxrandr-dev libxinerama-dev libxi-dev libxxf86vm-dev xvfb
TOOL_PKGS := protobuf-compiler

.PHONY: all deps build test unit e2e fuzz fuzz-short bench bench-net lint demo clean

all: build

# deps installs only the Debian packages that are missing, so it is quick
# and idempotent once a machine is set up.
deps:
	@missing=""; for p in $(NET_PKGS) $(GUI_PKGS) $(TOOL_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "make deps needs root to install:$$missing" >&2; exit 1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@$(GO) mod download

build: deps
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

# test is what CI runs: vet, the cross builds, unit tests with the race
# detector, the end-to-end tests (root; they skip with a message otherwise)
# and a short run of every fuzz target.
test: deps lint cross unit e2e fuzz-short

# cross builds for the OSes that are not supported yet, so that Linux-only
# code stays behind build tags and they keep failing with a clear error.
.PHONY: cross
cross:
	CGO_ENABLED=0 GOOS=darwin $(GO) build ./... && CGO_ENABLED=0 GOOS=windows $(GO) build ./...

unit:
	$(GO) test -race -count=1 -timeout 10m $$($(GO) list ./... | grep -v /test/e2e)

e2e:
	@if [ -d test/e2e ]; then $(GO) test -count=1 -timeout 10m -v ./test/e2e/...; fi

fuzz-short:
	FUZZTIME=$(FUZZTIME) ./test/fuzz.sh

fuzz:
	FUZZTIME=$${FUZZTIME:-60s} ./test/fuzz.sh

bench:
	$(GO) test -run='^$$' -bench=. -benchmem -count=1 ./...

# bench-net builds the local network, measures it and prints one
# key=value line per figure, all from one run (root).
bench-net: build
	@if [ "$$(id -u)" != 0 ]; then echo "make bench-net needs root: the local network runs in network namespaces" >&2; exit 1; fi
	@$(BIN)/mixnode devnet --bench 2>/dev/null | grep '='

lint:
	@bad=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# demo starts the local network (every node in its own namespace), sends
# probe traffic through entry, three mixes and exit with replies on SURBs,
# prints what crossed it, and removes everything it made.
demo: build
	@if [ "$$(id -u)" != 0 ]; then echo "make demo needs root: the local network runs in network namespaces" >&2; exit 1; fi
	$(BIN)/mixnode devnet --demo

clean:
	rm -rf $(BIN)

# proto regenerates the control API's Go code in tunnel/control/controlpb.
# The generators are installed into bin/tools at pinned versions (protoc-gen-go
# at go.mod's protobuf version) so that everyone generates identical files.
PROTOC_GEN_GO_GRPC := v1.6.2
PROTO_TOOLS = $(abspath $(BIN))/tools

.PHONY: proto
proto: deps
	GOBIN=$(PROTO_TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$$($(GO) list -m -f '{{.Version}}' google.golang.org/protobuf)
	GOBIN=$(PROTO_TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC)
	cd tunnel/control/controlpb && PATH="$(PROTO_TOOLS):$$PATH" protoc -I. \
		--go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative control.proto
