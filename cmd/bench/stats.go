package main

import (
	"math"
	"slices"
	"time"
)

// percentile returns the q-quantile (0 < q <= 1) of sorted by the
// nearest-rank method: the smallest value such that at least q of the
// values are at or below it. sorted must be in ascending order. An empty
// slice returns 0.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// median returns the median of values: the middle value, or the mean of
// the two middle values when there is an even number of them. values is
// not modified. An empty slice returns 0.
func median(values []float64) float64 {
	if len(values) == 0 {
		return 0
	}
	sorted := slices.Clone(values)
	slices.Sort(sorted)

	mid := len(sorted) / 2
	if len(sorted)%2 == 1 {
		return sorted[mid]
	}
	return (sorted[mid-1] + sorted[mid]) / 2
}

// spread summarizes one figure over several runs.
type spread struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// newSpread returns the median, minimum and maximum of values. An empty
// slice returns the zero spread.
func newSpread(values []float64) spread {
	if len(values) == 0 {
		return spread{}
	}
	return spread{
		Median: round3(median(values)),
		Min:    round3(slices.Min(values)),
		Max:    round3(slices.Max(values)),
	}
}

// latencySummary contains the quantiles of one sample of latencies.
type latencySummary struct {
	P50 time.Duration
	P90 time.Duration
	P99 time.Duration
	Max time.Duration
}

// summarizeLatencies sorts samples in place and returns their quantiles.
func summarizeLatencies(samples []time.Duration) latencySummary {
	slices.Sort(samples)
	return latencySummary{
		P50: percentile(samples, 0.50),
		P90: percentile(samples, 0.90),
		P99: percentile(samples, 0.99),
		Max: percentile(samples, 1),
	}
}

// millis converts d to milliseconds for reports, rounded to whole
// microseconds because the event timestamps carry no finer digits.
func millis(d time.Duration) float64 {
	return round3(float64(d) / float64(time.Millisecond))
}

// round3 rounds v to three decimals, which for milliseconds is whole
// microseconds. Reports use it to keep float noise out of their figures.
func round3(v float64) float64 {
	return math.Round(v*1000) / 1000
}
