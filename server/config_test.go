package server

import (
	"math"
	"strings"
	"testing"
)

func TestValidateRefusesRatesThatDisableTheLimit(t *testing.T) {
	for _, rate := range []float64{0, -1, math.NaN(), math.Inf(1)} {
		cfg := Defaults()
		cfg.DatabaseURL = "postgres://localhost/db"
		cfg.MessageRate = rate
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--message-rate") {
			t.Errorf("Validate(--message-rate %g) = %v, want an error naming --message-rate", rate, err)
		}
	}
}
