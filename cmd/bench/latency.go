package main

import (
	"context"
	"fmt"
	"time"
)

// latencyRun contains the figures of one run of the latency scenario.
// Durations are in milliseconds.
type latencyRun struct {
	Run       int   `json:"run"`
	Delivered int64 `json:"delivered"`
	Expected  int64 `json:"expected"`

	// Delivery latency: receive time minus the event's ts, over every
	// delivery to every subscriber.
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`

	// How long one publish call took (SQL statement with its commit,
	// HTTP request or websocket request), which delivery latency does
	// not include.
	PublishP50 float64 `json:"publish_p50_ms"`
	PublishP99 float64 `json:"publish_p99_ms"`

	OutOfOrder       int64    `json:"out_of_order"`
	SubscriberErrors []string `json:"subscriber_errors,omitempty"`

	// Slow subscribers count in none of the figures above. SlowEnds
	// counts how their connections ended, by close code such as "1013",
	// slowEndNoCode or slowEndOpen.
	SlowSubscribers int            `json:"slow_subscribers,omitempty"`
	SlowEnds        map[string]int `json:"slow_ends,omitempty"`
}

// runLatency runs the latency scenario once: cfg.Subscribers subscribers
// and cfg.SlowSubscribers slow subscribers on one topic, cfg.Events events
// published cfg.Interval apart through cfg.Via.
func runLatency(ctx context.Context, cfg config, t *target, run int) (latencyRun, error) {
	topic := newTopic(scenarioLatency, run)
	receivers, err := dialReceivers(ctx, t, cfg.Subscribers, topic, cfg.Events+warmupEvents, nil)
	if err != nil {
		return latencyRun{}, err
	}
	defer closeReceivers(receivers)

	slow, err := dialSlowSubscribers(ctx, t, cfg.SlowSubscribers, topic)
	if err != nil {
		return latencyRun{}, err
	}
	defer closeReceivers(slow)

	pub, err := newPublisher(ctx, cfg.Via, t)
	if err != nil {
		return latencyRun{}, err
	}
	defer pub.close()

	if err := warmUp(ctx, receivers, pub, topic); err != nil {
		return latencyRun{}, err
	}

	var publishTimes []time.Duration
	publish := func() (int64, error) {
		var err error
		publishTimes, err = publishSpaced(ctx, pub, topic, cfg)
		return int64(len(publishTimes)), err
	}
	published, err := collectAll(ctx, receivers, cfg.DrainTimeout, publish)
	if err != nil {
		return latencyRun{}, err
	}

	var slowEnds map[string]int
	if len(slow) > 0 {
		slowEnds = awaitSlowEnds(ctx, slow, slowEndTimeout)
	}

	d := totals(receivers)
	delivery := summarizeLatencies(d.latencies)
	publishing := summarizeLatencies(publishTimes)
	return latencyRun{
		Run:              run,
		Delivered:        d.delivered,
		Expected:         published * int64(len(receivers)),
		P50:              millis(delivery.P50),
		P90:              millis(delivery.P90),
		P99:              millis(delivery.P99),
		Max:              millis(delivery.Max),
		PublishP50:       millis(publishing.P50),
		PublishP99:       millis(publishing.P99),
		OutOfOrder:       d.outOfOrder,
		SubscriberErrors: errorStrings(d.errors),
		SlowSubscribers:  len(slow),
		SlowEnds:         slowEnds,
	}, nil
}

// publishSpaced publishes cfg.Events events, starting one every
// cfg.Interval, and returns how long each publish call took. A call that
// takes longer than the interval delays the next one instead of
// overlapping it.
func publishSpaced(ctx context.Context, pub publisher, topic string, cfg config) ([]time.Duration, error) {
	durations := make([]time.Duration, 0, cfg.Events)
	timer := time.NewTimer(0)
	defer timer.Stop()

	start := time.Now()
	for i := range cfg.Events {
		if wait := time.Until(start.Add(time.Duration(i) * cfg.Interval)); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return durations, fmt.Errorf("publish event %d: %w", i, ctx.Err())
			}
		}

		callCtx, cancel := context.WithTimeout(ctx, publishTimeout)
		begin := time.Now()
		err := pub.publish(callCtx, topic, makePayload(i, cfg.PayloadBytes))
		durations = append(durations, time.Since(begin))
		cancel()
		if err != nil {
			return durations, fmt.Errorf("publish event %d: %w", i, err)
		}
	}
	return durations, nil
}

// errorStrings returns the messages of errs, for the JSON report.
func errorStrings(errs []error) []string {
	var out []string
	for _, err := range errs {
		out = append(out, err.Error())
	}
	return out
}
