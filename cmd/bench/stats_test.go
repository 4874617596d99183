package main

import (
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(values ...int) []time.Duration {
		out := make([]time.Duration, len(values))
		for i, v := range values {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		q      float64
		want   time.Duration
	}{
		{"empty", nil, 0.5, 0},
		{"one value", ms(7), 0.99, 7 * time.Millisecond},
		{"median of odd count", ms(1, 2, 3, 4, 5), 0.5, 3 * time.Millisecond},
		{"median of even count takes lower", ms(1, 2, 3, 4), 0.5, 2 * time.Millisecond},
		{"p90 of ten", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0.9, 9 * time.Millisecond},
		{"p99 of ten is max", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0.99, 10 * time.Millisecond},
		{"max", ms(1, 2, 3), 1, 3 * time.Millisecond},
		{"tiny q is min", ms(4, 5, 6), 0.0001, 4 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.sorted, tt.q); got != tt.want {
				t.Errorf("percentile(%v, %v) = %v, want %v", tt.sorted, tt.q, got, tt.want)
			}
		})
	}
}

func TestPercentileOfHundred(t *testing.T) {
	sorted := make([]time.Duration, 100)
	for i := range sorted {
		sorted[i] = time.Duration(i + 1)
	}
	for _, q := range []float64{0.5, 0.9, 0.99} {
		want := time.Duration(q * 100)
		if got := percentile(sorted, q); got != want {
			t.Errorf("percentile(1..100, %v) = %v, want %v", q, got, want)
		}
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		name   string
		values []float64
		want   float64
	}{
		{"empty", nil, 0},
		{"one value", []float64{4}, 4},
		{"odd count unsorted", []float64{9, 1, 5}, 5},
		{"even count is mean of middle", []float64{4, 1, 3, 10}, 3.5},
		{"repeated values", []float64{2, 2, 2}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := median(tt.values); got != tt.want {
				t.Errorf("median(%v) = %v, want %v", tt.values, got, tt.want)
			}
		})
	}
}

func TestMedianKeepsInput(t *testing.T) {
	values := []float64{3, 1, 2}
	median(values)
	if values[0] != 3 || values[1] != 1 || values[2] != 2 {
		t.Errorf("median reordered its input: got %v, want [3 1 2]", values)
	}
}

func TestNewSpread(t *testing.T) {
	got := newSpread([]float64{12, 10, 15})
	want := spread{Median: 12, Min: 10, Max: 15}
	if got != want {
		t.Errorf("newSpread([12 10 15]) = %+v, want %+v", got, want)
	}
}

func TestSummarizeLatencies(t *testing.T) {
	samples := []time.Duration{5, 1, 4, 2, 3}
	got := summarizeLatencies(samples)
	want := latencySummary{P50: 3, P90: 5, P99: 5, Max: 5}
	if got != want {
		t.Errorf("summarizeLatencies([5 1 4 2 3]) = %+v, want %+v", got, want)
	}
}
