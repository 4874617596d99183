package server

import (
	"math"
	"strings"
	"testing"
	"time"
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

func TestDrainSpreadIsCutToHalfTheTimeout(t *testing.T) {
	tests := []struct {
		spread, timeout, want time.Duration
	}{
		{10 * time.Second, 15 * time.Second, 7500 * time.Millisecond},
		{2 * time.Second, 15 * time.Second, 2 * time.Second},
		{0, 15 * time.Second, 0},
		{10 * time.Second, 5 * time.Second, 2500 * time.Millisecond},
	}
	for _, tt := range tests {
		c := Config{DrainSpread: tt.spread, DrainTimeout: tt.timeout}
		if got := c.drainSpread(); got != tt.want {
			t.Errorf("drainSpread with --drain-spread %s and --drain-timeout %s = %s, want %s", tt.spread, tt.timeout, got, tt.want)
		}
	}

	c := Defaults()
	c.DatabaseURL = "postgres://localhost/db"
	c.DrainSpread = -time.Second
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--drain-spread") {
		t.Errorf("Validate with a negative --drain-spread = %v, want an error naming it", err)
	}
}
