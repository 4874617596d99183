# The two commands of the README, and a few more for development.

.PHONY: dev test build bench lint

# Starts a throwaway local Postgres (installing Debian's postgresql package
# first when it is missing), the sidecar and a demo.
dev:
	./scripts/ensure-postgres.sh
	go build -o bin/sidecar ./cmd/sidecar
	./bin/sidecar dev

# The test command of the README and CI.
test:
	./scripts/ensure-postgres.sh
	go test -race -count=1 ./...

build:
	CGO_ENABLED=0 go build -trimpath -o bin/sidecar ./cmd/sidecar

lint:
	gofmt -l .
	go vet ./...
