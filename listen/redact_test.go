package listen

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestRedact(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"dial tcp 127.0.0.1:5432: connection refused", "dial tcp 127.0.0.1:5432: connection refused"},
		{"postgres://bob:s3cret@db:5432/app", "postgres://bob:xxxxx@db:5432/app"},
		{"postgresql://bob:p%40ss@db/app?sslmode=disable", "postgresql://bob:xxxxx@db/app?sslmode=disable"},
		{"postgres://bob@db/app", "postgres://bob@db/app"},
		{"postgres://db/app?password=s3cret&sslmode=disable", "postgres://db/app?password=xxxxx&sslmode=disable"},
		{"host=db password=s3cret user=bob", "host=db password=xxxxx user=bob"},
		{"host=db password='s3 cret' user=bob", "host=db password=xxxxx user=bob"},
		{"host=db PASSWORD = s3cret", "host=db PASSWORD = xxxxx"},
		{"sslpassword=s3cret", "sslpassword=xxxxx"},
		{"password authentication failed for user \"bob\"", "password authentication failed for user \"bob\""},
	}

	for _, tt := range tests {
		if got := redact(tt.in); got != tt.want {
			t.Errorf("redact(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestRedactedErrorKeepsChain(t *testing.T) {
	parseErr := pgconn.NewParseConfigError("postgres://bob:s3cret@db:port/app", "invalid port", errors.New(`parse "postgres://bob:s3cret@db:port/app"`))
	err := fmt.Errorf("listen: %w", &redactedError{parseErr})

	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("err.Error() = %q, want the password masked", err)
	}

	var target *pgconn.ParseConfigError
	if !errors.As(err, &target) {
		t.Errorf("errors.As(%v, *pgconn.ParseConfigError) = false, want true", err)
	}
}
