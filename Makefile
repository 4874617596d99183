# The two commands of the README, and a few more for development.

.PHONY: dev test build bench lint fuzz

# Starts a throwaway local Postgres (installing Debian's postgresql package
# first when it is missing), the sidecar and a demo.
dev:
	./scripts/ensure-postgres.sh
	go build -o bin/sidecar ./cmd/sidecar
	./bin/sidecar dev

# The test command of the README and CI: Go, JavaScript and browser tests.
test:
	./scripts/ensure-test-deps.sh
	go test -race -count=1 ./...

build:
	CGO_ENABLED=0 go build -trimpath -o bin/sidecar ./cmd/sidecar

lint:
	gofmt -l .
	go vet ./...

# Runs each fuzz target for FUZZTIME, one after another. Inputs that fail
# are written to the package's testdata/fuzz, which `go test` replays.
FUZZTIME ?= 1m

fuzz:
	go test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./rpc/
	go test -run '^$$' -fuzz '^FuzzPattern$$' -fuzztime $(FUZZTIME) ./topic/
	go test -run '^$$' -fuzz '^FuzzParseMatch$$' -fuzztime $(FUZZTIME) ./topic/
	go test -run '^$$' -fuzz '^FuzzSanitize$$' -fuzztime $(FUZZTIME) ./topic/
	go test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime $(FUZZTIME) ./auth/
	go test -run '^$$' -fuzz '^FuzzRequestToken$$' -fuzztime $(FUZZTIME) ./auth/
	go test -run '^$$' -fuzz '^FuzzMessageGuard$$' -fuzztime $(FUZZTIME) ./server/
	go test -run '^$$' -fuzz '^FuzzValidateChannel$$' -fuzztime $(FUZZTIME) ./listen/
