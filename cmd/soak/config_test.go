package main

import (
	"io"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseFaultKinds(t *testing.T) {
	tests := []struct {
		in      string
		want    []faultKind
		wantErr bool
	}{
		{"all", allFaults, false},
		{"none", nil, false},
		{"", nil, false},
		{"listen-cut", []faultKind{faultListenCut}, false},
		{"sidecar-kill, postgres-crash,sidecar-kill", []faultKind{faultSidecarKill, faultPostgresCrash}, false},
		{"sidecar-kill,meteor", nil, true},
	}
	for _, tt := range tests {
		got, err := parseFaultKinds(tt.in)
		if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("parseFaultKinds(%q) = %v, %v, want %v, error %t", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseConfigDefaults(t *testing.T) {
	cfg, err := parseConfig(nil, io.Discard)
	if err != nil {
		t.Fatalf("parseConfig(no flags) = %v", err)
	}
	want := config{
		Duration: 10 * time.Minute, Sidecars: 2, Rate: 200,
		SQLPublishers: 2, HTTPPublishers: 1, WSPublishers: 1, Subscribers: 4, LargeFraction: 0.02,
		Faults: allFaults, FaultMin: 20 * time.Second, FaultMax: 40 * time.Second,
		CutDuration: 10 * time.Second, StallDuration: 30 * time.Second,
		RecoveryTimeout: 2 * time.Minute, SettleTimeout: time.Minute,
	}
	if diff := cmp.Diff(cfg, want); diff != "" {
		t.Errorf("parseConfig(no flags) mismatch (-got +want):\n%s", diff)
	}
}

func TestParseConfigRejects(t *testing.T) {
	for _, args := range [][]string{
		{"--sidecars", "3"},
		{"--fault-min", "40s", "--fault-max", "20s"},
		{"--sql-publishers", "0", "--http-publishers", "0", "--ws-publishers", "0"},
		{"--rate", "0"},
		{"--duration", "48h"},
		{"extra"},
	} {
		if _, err := parseConfig(args, io.Discard); err == nil {
			t.Errorf("parseConfig(%q) = nil error, want an error", args)
		}
	}
}

func TestBurstTopicMatchesPattern(t *testing.T) {
	for i := range 4 {
		for _, patterns := range subscriptionSpecs(i) {
			st, err := newSubscriptionState("s", patterns)
			if err != nil {
				t.Fatal(err)
			}
			if topic := burstTopic(patterns[0]); !st.matches(topic) {
				t.Errorf("burstTopic(%q) = %q, which %v does not match", patterns[0], topic, patterns)
			}
		}
	}
}

func TestFaultScheduleCoversEveryKind(t *testing.T) {
	in := &injector{cfg: config{Faults: allFaults}, rng: newTestRand()}
	for round := range 3 {
		var got []faultKind
		for range allFaults {
			got = append(got, in.next())
		}
		slices.Sort(got)
		want := slices.Clone(allFaults)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("round %d = %v, want each kind once", round, got)
		}
	}
}

func TestFaultScheduleFollowsSeed(t *testing.T) {
	a := &injector{cfg: config{Faults: allFaults}, rng: newTestRand()}
	b := &injector{cfg: config{Faults: allFaults}, rng: newTestRand()}
	for i := range 20 {
		if ka, kb := a.next(), b.next(); ka != kb {
			t.Fatalf("fault %d: %s and %s from the same seed, want the same kind", i, ka, kb)
		}
	}
}
