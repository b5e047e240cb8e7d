# sluice — make targets. README explains each; `make help` lists them.
SHELL := /bin/bash
GO    ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
# Tests run against real services; see scripts/with-services.
TEST_FLAGS ?= -timeout 15m

.PHONY: help build test lint deps demo run package bench chaos clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

deps: node_modules/.bin/azurite ## install what the tests need (Azurite from npm)

node_modules/.bin/azurite: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

build: ## build bin/sluice
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/sluice ./cmd/sluice

test: deps ## run all tests against Azurite and PostgreSQL (started and stopped here)
	scripts/with-services $(GO) test $(TEST_FLAGS) ./...

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

demo: ## the whole pipeline on this machine: a changing list into SQLite and a webhook
	scripts/demo

run: ## sluice run with your sluice.yaml against Azurite (data kept in .azurite/)
	scripts/run

package: ## build dist/ for 'cd dist && func azure functionapp publish <app>'
	scripts/package dist

bench: deps ## measure drains, read and handler start against baselines; writes bench/results/latest.json
	scripts/with-services $(GO) run ./cmd/sluice-bench $(BENCH_FLAGS)

chaos: deps ## fault-injection suite: kills, outages, throttling against real processes (CHAOS_FLAGS="--seed N --short --keep -v")
	$(GO) run ./cmd/sluice-chaos $(CHAOS_FLAGS)

clean: ## remove build output
	rm -rf bin dist
