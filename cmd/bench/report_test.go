package main

import "testing"

func TestCommandLineHidesSecrets(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{
			"no arguments",
			nil,
			"go run ./cmd/bench",
		},
		{
			"secret as next argument",
			[]string{"--jwt-secret", "s3cret", "--api-key", "k1", "--runs", "3"},
			"go run ./cmd/bench --jwt-secret REDACTED --api-key REDACTED --runs 3",
		},
		{
			"secret after equals sign",
			[]string{"-jwt-secret=s3cret", "--api-key=k1"},
			"go run ./cmd/bench -jwt-secret=REDACTED --api-key=REDACTED",
		},
		{
			"database password",
			[]string{"--database-url", "postgres://app:pw@127.0.0.1:5432/db"},
			`go run ./cmd/bench --database-url postgres://app:REDACTED@127.0.0.1:5432/db`,
		},
		{
			"database password after equals sign",
			[]string{"--database-url=postgres://app:pw@127.0.0.1/db"},
			`go run ./cmd/bench --database-url=postgres://app:REDACTED@127.0.0.1/db`,
		},
		{
			"query string is quoted",
			[]string{"--database-url", "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"},
			`go run ./cmd/bench --database-url "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := commandLine(tt.args); got != tt.want {
				t.Errorf("commandLine(%q) =\n%s\nwant\n%s", tt.args, got, tt.want)
			}
		})
	}
}
