package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// report is the soak's result, printed as text or JSON. Durations are in
// seconds.
type report struct {
	Command    string       `json:"command"`
	Seed       uint64       `json:"seed"`
	Duration   float64      `json:"duration_s"`   // configured publishing time
	Publishing float64      `json:"publishing_s"` // actual publishing time, the last fault's recovery included
	Sidecars   int          `json:"sidecars"`
	Rate       float64      `json:"rate"`
	Postgres   postgresInfo `json:"postgres"`
	Stopped    string       `json:"stopped,omitempty"` // the reason publishing ended early, if it did

	Publishers []publisherReport `json:"publishers"`
	Published  publishCounts     `json:"published"`
	Committed  int               `json:"committed"` // soak events in the table
	Integrity  integrity         `json:"integrity"`

	Subscribers []subscriberReport `json:"subscribers"`
	Delivery    deliveryResult     `json:"delivery"`
	Settled     bool               `json:"settled"` // every subscription reached its newest expected event
	SettleTime  float64            `json:"settle_s"`
	// MissingEvents describes some missing events: where they came from,
	// when, and the fault before them.
	MissingEvents []string `json:"missing_events,omitempty"`

	Faults   []faultReport `json:"faults"`
	Recovery []kindSummary `json:"recovery"`

	Failures []string `json:"failures"` // empty when the run passed
	WorkDir  string   `json:"work_dir,omitempty"`
}

type publisherReport struct {
	Name string `json:"name"`
	publishCounts
}

type subscriberReport struct {
	Name          string               `json:"name"`
	Subscriptions []subscriptionReport `json:"subscriptions"`
	deliveryResult
	Connections int            `json:"connections"`
	CloseCodes  map[string]int `json:"close_codes"`
	DialErrors  int            `json:"dial_errors"`
	LastError   string         `json:"last_error,omitempty"`
	ConnLog     []connReport   `json:"connection_log"`
}

// connReport is one connection of a subscriber. Times are offsets from
// the start of publishing.
type connReport struct {
	Sidecar   int     `json:"sidecar"`
	Opened    float64 `json:"opened_s"`
	Ended     float64 `json:"ended_s"`
	CloseCode int     `json:"close_code"` // -1 when no close frame arrived
	Reason    string  `json:"reason,omitempty"`
}

type subscriptionReport struct {
	Name     string   `json:"name"`
	Patterns []string `json:"patterns"`
	Head     int64    `json:"head"`
	Refusals []string `json:"resume_refusals,omitempty"`
	deliveryResult
}

type faultReport struct {
	Kind      faultKind `json:"kind"`
	Target    string    `json:"target,omitempty"`
	At        float64   `json:"at_s"`
	Action    float64   `json:"action_s"`
	Recovery  float64   `json:"recovery_s"`
	Recovered bool      `json:"recovered"`
	Note      string    `json:"note,omitempty"`
	Error     string    `json:"error,omitempty"`
}

// kindSummary sums up the recoveries of one fault kind.
type kindSummary struct {
	Kind      faultKind `json:"kind"`
	Count     int       `json:"count"`
	Recovered int       `json:"recovered"`
	Median    float64   `json:"median_s"`
	Max       float64   `json:"max_s"`
}

// failed reports whether the run found an error.
func (r *report) failed() bool { return len(r.Failures) > 0 }

// judge fills Failures from the findings.
func (r *report) judge() {
	add := func(n int, what string) {
		if n > 0 {
			r.Failures = append(r.Failures, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(r.Delivery.Missing, "events missing")
	add(r.Delivery.Duplicated, "events duplicated")
	add(r.Delivery.OutOfOrder, "events out of order")
	add(r.Delivery.Mismatched, "events with a topic or data that differs from the table")
	add(r.Delivery.Unexpected, "unexpected events received")
	add(r.Integrity.AckedMissing, "acknowledged events not in the table")
	add(r.Integrity.NotCommittedPresent, "rolled back, rejected or failed events in the table")
	add(r.Integrity.CommittedTwice, "events in the table more than once")
	add(r.Integrity.IDMismatch, "acknowledged ids that differ from the table")
	add(r.Integrity.PartialTransactions, "transactions committed in part")
	add(r.Integrity.Unmarked, "events in the table that no publisher recorded")
}

// summarizeFaults fills Faults and Recovery from the fault log.
func (r *report) summarizeFaults(log []faultRecord) {
	byKind := make(map[faultKind][]float64)
	counts := make(map[faultKind]int)
	for _, f := range log {
		r.Faults = append(r.Faults, faultReport{
			Kind: f.Kind, Target: f.Target,
			At: seconds(f.At), Action: seconds(f.Action), Recovery: seconds(f.Recovery),
			Recovered: f.Recovered, Note: f.Note, Error: f.Err,
		})
		counts[f.Kind]++
		if f.Recovered {
			byKind[f.Kind] = append(byKind[f.Kind], seconds(f.Recovery))
		}
	}
	for _, k := range allFaults {
		if counts[k] == 0 {
			continue
		}
		s := kindSummary{Kind: k, Count: counts[k], Recovered: len(byKind[k])}
		if rec := byKind[k]; len(rec) > 0 {
			slices.Sort(rec)
			s.Median = median(rec)
			s.Max = rec[len(rec)-1]
		}
		r.Recovery = append(r.Recovery, s)
	}
}

// median returns the median of sorted values.
func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

func seconds(d time.Duration) float64 {
	return float64(d.Round(time.Millisecond)) / float64(time.Second)
}

// formatSeconds formats d as seconds with one decimal.
func formatSeconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
}

// formatOffset formats an offset from the start as m:ss.s.
func formatOffset(d time.Duration) string {
	d = d.Round(100 * time.Millisecond)
	m := int(d / time.Minute)
	s := (d - time.Duration(m)*time.Minute).Seconds()
	return fmt.Sprintf("%d:%04.1f", m, s)
}

func (r *report) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// writeText prints the report as tables.
func (r *report) writeText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "command:    %s\n", r.Command)
	fmt.Fprintf(&b, "seed:       %d\n", r.Seed)
	fmt.Fprintf(&b, "setup:      %d sidecar(s), PostgreSQL %s (fsync %s, synchronous_commit %s), all on 127.0.0.1\n",
		r.Sidecars, r.Postgres.Version, r.Postgres.Fsync, r.Postgres.SynchronousCommit)
	fmt.Fprintf(&b, "publishing: %.1fs at %g events/s (configured %.0fs)", r.Publishing, r.Rate, r.Duration)
	if r.Stopped != "" {
		fmt.Fprintf(&b, ", stopped early: %s", r.Stopped)
	}
	b.WriteString("\n\n")

	r.writePublishing(&b)
	r.writeDelivery(&b)

	if len(r.Faults) == 0 {
		b.WriteString("\nfaults: none injected\n")
	} else {
		r.writeFaults(&b)
	}

	if r.failed() {
		fmt.Fprintf(&b, "\nresult: FAIL: %s\n", strings.Join(r.Failures, ", "))
	} else {
		b.WriteString("\nresult: PASS: every committed event reached every matching subscription once, in order\n")
	}
	if r.WorkDir != "" {
		fmt.Fprintf(&b, "logs: %s\n", r.WorkDir)
	}

	_, err := io.WriteString(w, b.String())
	return err
}

// writePublishing prints what the publishers did and what the table
// holds.
func (r *report) writePublishing(b *strings.Builder) {
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "publisher\ttransactions\tevents\tacknowledged\trolled back\trejected\tfailed\tuncertain\t(committed)\terrors\t")
	for _, p := range r.Publishers {
		writePublishRow(tw, p.Name, p.publishCounts)
	}
	writePublishRow(tw, "total", r.Published)
	tw.Flush()
	for _, p := range r.Publishers {
		for _, s := range p.CommittedWithError {
			fmt.Fprintf(b, "  %s\n", s)
		}
	}

	in := r.Integrity
	fmt.Fprintf(b, "\ncommitted (in the table): %d events\n", r.Committed)
	fmt.Fprintf(b, "acknowledged but not committed %d, not committed but in the table %d, committed twice %d, id differs %d, partly committed transactions %d, unrecorded %d\n",
		in.AckedMissing, in.NotCommittedPresent, in.CommittedTwice, in.IDMismatch, in.PartialTransactions, in.Unmarked)
	for _, s := range in.Samples {
		fmt.Fprintf(b, "  %s\n", s)
	}
}

// writeDelivery prints what each subscriber received.
func (r *report) writeDelivery(b *strings.Builder) {
	b.WriteString("\n")
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "subscriber\tpatterns\tcommitted\tdelivered\tmissing\tduplicated\tout of order\tmismatched\tunexpected\tconnections\tclose codes\t")
	for _, s := range r.Subscribers {
		var patterns []string
		for _, sub := range s.Subscriptions {
			patterns = append(patterns, strings.Join(sub.Patterns, "+"))
		}
		writeDeliveryRow(tw, s.Name, strings.Join(patterns, " "), s.deliveryResult, strconv.Itoa(s.Connections), formatCodes(s.CloseCodes))
	}
	writeDeliveryRow(tw, "total", "", r.Delivery, "", "")
	tw.Flush()
	fmt.Fprintf(b, "settled: %t after %.1fs\n", r.Settled, r.SettleTime)
	for _, m := range r.MissingEvents {
		fmt.Fprintf(b, "  %s\n", m)
	}
}

// writeFaults prints the fault log and the recovery times by kind.
func (r *report) writeFaults(b *strings.Builder) {
	b.WriteString("\nfaults\n")
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "at\tkind\ttarget\taction\trecovery\tnote")
	for _, f := range r.Faults {
		recovery := fmt.Sprintf("%.2fs", f.Recovery)
		if !f.Recovered {
			recovery = "not within " + recovery
		}
		if f.Error != "" {
			recovery = "failed: " + f.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.1fs\t%s\t%s\n", formatOffset(time.Duration(f.At*float64(time.Second))), f.Kind, dash(f.Target), f.Action, recovery, f.Note)
	}
	tw.Flush()

	b.WriteString("\nrecovery by kind (seconds from the fault until every affected subscription received a newer event)\n")
	tw = tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "kind\tcount\trecovered\tmedian\tmax\t")
	for _, k := range r.Recovery {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.2f\t%.2f\t\n", k.Kind, k.Count, k.Recovered, k.Median, k.Max)
	}
	tw.Flush()
}

func writePublishRow(w io.Writer, name string, c publishCounts) {
	fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t(%d)\t%d\t\n",
		name, c.Transactions, c.Attempted, c.Acked, c.RolledBack, c.Rejected, c.Failed, c.Uncertain, c.UncertainCommitted, c.Errors)
}

func writeDeliveryRow(w io.Writer, name, patterns string, d deliveryResult, conns, codes string) {
	fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t\n",
		name, patterns, d.Committed, d.Delivered, d.Missing, d.Duplicated, d.OutOfOrder, d.Mismatched, d.Unexpected, conns, codes)
}

// formatCodes formats close code counts as "1012×2 1013×1", in code order.
func formatCodes(codes map[string]int) string {
	keys := make([]string, 0, len(codes))
	for k := range codes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s×%d", k, codes[k])
	}
	return dash(strings.Join(parts, " "))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
