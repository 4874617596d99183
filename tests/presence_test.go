package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/client"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

func presenceToken(t *testing.T, sub string) string {
	t.Helper()
	tok, err := auth.Sign([]byte(testSecret), sub, auth.Realtime{Subscribe: []string{"room.>", "h.>"}, Presence: []string{"room.>"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func ctxLong(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	t.Cleanup(cancel)
	return ctx
}

func memberIDs(members []client.Member) []string {
	var ids []string
	for _, m := range members {
		ids = append(ids, m.ClientID)
	}
	slices.Sort(ids)
	return ids
}

type presenceData struct {
	Event    string          `json:"event"`
	ClientID string          `json:"client_id"`
	Subject  string          `json:"sub"`
	Info     json.RawMessage `json:"info"`
}

// nextPresence returns the next presence event of sub.
func nextPresence(t *testing.T, sub *client.Subscription) presenceData {
	t.Helper()
	ev := next(t, sub)
	var d presenceData
	if err := json.Unmarshal(ev.Data, &d); err != nil {
		t.Fatalf("presence event %s: %v", ev.Data, err)
	}
	return d
}

// Three clients on two instances join one topic and each lists all three;
// when one disconnects, the others get a leave event and list two.
func TestPresenceAcrossInstances(t *testing.T) {
	db := pgtest.NewDatabase(t)
	a := startSidecar(t, db)
	b := startSidecar(t, db)
	ctx := ctxLong(t)

	c1 := dialToken(t, a, presenceToken(t, "alice"))
	c2 := dialToken(t, a, presenceToken(t, "bob"))
	c3 := dialToken(t, b, presenceToken(t, "carol"))
	watch2 := subscribe(t, c2, []string{"presence.room.1"})
	watch3 := subscribe(t, c3, []string{"presence.room.1"})

	for i, c := range []*client.Conn{c1, c2, c3} {
		if err := c.JoinPresence(ctx, "room.1", map[string]any{"seat": i}); err != nil {
			t.Fatalf("client %d: JoinPresence: %v", i+1, err)
		}
	}
	want := []string{c1.Welcome().ClientID, c2.Welcome().ClientID, c3.Welcome().ClientID}
	slices.Sort(want)
	for i, c := range []*client.Conn{c1, c2, c3} {
		members, err := c.Presence(ctx, "room.1")
		if err != nil {
			t.Fatalf("client %d: Presence: %v", i+1, err)
		}
		if got := memberIDs(members); !slices.Equal(got, want) {
			t.Errorf("client %d sees %v, want all three %v", i+1, got, want)
		}
	}
	if st, err := c3.PresenceStats(ctx, "room.1"); err != nil || st.Clients != 3 || st.Subjects != 3 {
		t.Errorf("PresenceStats = %+v, %v, want 3 clients of 3 subjects", st, err)
	}

	// The join events: each watcher receives the three joins, with info.
	for _, w := range []*client.Subscription{watch2, watch3} {
		joined := map[string]bool{}
		for range 3 {
			d := nextPresence(t, w)
			if d.Event != "join" || len(d.Info) == 0 {
				t.Errorf("presence event = %+v, want a join with info", d)
			}
			joined[d.ClientID] = true
		}
		if len(joined) != 3 {
			t.Errorf("join events named %d clients, want 3", len(joined))
		}
	}

	c1.Close()
	for i, w := range []*client.Subscription{watch2, watch3} {
		if d := nextPresence(t, w); d.Event != "leave" || d.ClientID != c1.Welcome().ClientID || d.Subject != "alice" {
			t.Errorf("watcher %d: event after the disconnect = %+v, want alice's leave", i+2, d)
		}
	}
	for i, c := range []*client.Conn{c2, c3} {
		members, err := c.Presence(ctx, "room.1")
		if err != nil || len(members) != 2 {
			t.Errorf("client %d after the disconnect sees %v, %v, want two", i+2, memberIDs(members), err)
		}
	}

	// The application's view over HTTP.
	code, body := getJSON(t, b, "/v1/presence/stats?topic=room.1")
	if code != http.StatusOK || body["clients"] != float64(2) {
		t.Errorf("GET /v1/presence/stats = %d %v, want 2 clients", code, body)
	}
}

// Presence needs the token's presence patterns, and presence topics leave
// room for the presence. prefix.
func TestPresenceRefusals(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	ctx := ctxLong(t)
	c := dialToken(t, sc, presenceToken(t, "dave"))

	var rerr *client.RPCError
	if err := c.JoinPresence(ctx, "lobby", nil); !asRPCError(err, &rerr) || rerr.Code != -32003 {
		t.Errorf("JoinPresence outside the presence patterns = %v, want -32003", err)
	}
	long := "room." + string(slices.Repeat([]byte("x"), 245))
	if err := c.JoinPresence(ctx, long, nil); !asRPCError(err, &rerr) || rerr.Code != -32602 {
		t.Errorf("JoinPresence on a %d-byte topic = %v, want -32602", len(long), err)
	}
	if _, err := c.Subscribe(ctx, []string{"presence.lobby"}); !asRPCError(err, &rerr) || rerr.Code != -32003 {
		t.Errorf("Subscribe to presence.lobby = %v, want -32003", err)
	}
}

// A killed instance's clients vanish from presence within the documented
// bound (30 s after its last heartbeat), and the others hear them leave.
func TestPresenceOfKilledInstanceExpires(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the presence expiry")
	}
	db := pgtest.NewDatabase(t)
	survivor := startSidecar(t, db)

	addr := freeAddr(t)
	cmd := command(t, []string{"DATABASE_URL=" + db, "SIDECAR_ADDR=" + addr, "SIDECAR_JWT_SECRET=" + testSecret, "SIDECAR_API_KEYS=" + testAPIKey, "SIDECAR_LOG_LEVEL=warn"}, "serve")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	waitFor(t, "the instance to be ready", func() bool { return statusOf("http://"+addr+"/readyz") == http.StatusOK })

	ctx := ctxLong(t)
	doomed, err := client.Dial(ctx, "ws://"+addr+"/v1/ws", client.Options{Token: presenceToken(t, "erin")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { doomed.CloseNow() })
	if err := doomed.JoinPresence(ctx, "room.k", nil); err != nil {
		t.Fatal(err)
	}
	watcher := dialToken(t, survivor, presenceToken(t, "frank"))
	watch := subscribe(t, watcher, []string{"presence.room.k"})
	if members, err := watcher.Presence(ctx, "room.k"); err != nil || len(members) != 1 {
		t.Fatalf("Presence before the kill = %v, %v, want the one member", memberIDs(members), err)
	}

	killed := time.Now()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	exited <- nil

	deadline := killed.Add(45 * time.Second)
	for {
		members, err := watcher.Presence(context.Background(), "room.k")
		if err == nil && len(members) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the killed instance's client is still present 45 s after the kill: %v, %v", memberIDs(members), err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("gone from presence %s after the kill", time.Since(killed).Round(time.Second))

	select {
	case ev := <-watch.Events():
		var d presenceData
		_ = json.Unmarshal(ev.Data, &d)
		if d.Event != "leave" || d.ClientID != doomed.Welcome().ClientID {
			t.Errorf("presence event = %+v, want the killed client's leave", d)
		}
	case <-time.After(30 * time.Second):
		t.Error("no leave event for the killed instance's client within 30 s of its expiry")
	}
}

// history returns a topic's newest durable events first, pages through
// them without gaps or repeats, and is authorized like subscribe.
func TestHistoryPagesNewestFirst(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	ctx := ctxLong(t)
	pg := connect(t, db)
	for i := range 25 {
		exec(t, pg, `SELECT realtime.publish('h.t', $1::jsonb)`, fmt.Sprint(i))
		exec(t, pg, `SELECT realtime.publish('h.other', '0')`)
	}

	c := dialToken(t, sc, presenceToken(t, "gina"))
	var ids []int64
	var datas []string
	before := int64(0)
	pages := 0
	for {
		page, err := c.History(ctx, "h.t", 10, before)
		if err != nil {
			t.Fatalf("History: %v", err)
		}
		pages++
		for _, ev := range page.Events {
			if ev.Topic != "h.t" {
				t.Errorf("history of h.t returned an event of %s", ev.Topic)
			}
			ids = append(ids, ev.ID)
			datas = append(datas, string(ev.Data))
		}
		if page.NextBefore == 0 {
			break
		}
		before = page.NextBefore
	}
	if len(ids) != 25 || pages != 3 {
		t.Fatalf("history returned %d events in %d pages, want 25 in 3", len(ids), pages)
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] >= ids[i-1] {
			t.Fatalf("history ids %v are not strictly decreasing", ids)
		}
	}
	if datas[0] != "24" || datas[24] != "0" {
		t.Errorf("history starts with %s and ends with %s, want the newest (24) first and the oldest (0) last", datas[0], datas[24])
	}

	// A page size that divides the events: the last full page has next_before 0.
	pages, before = 0, 0
	for {
		page, err := c.History(ctx, "h.t", 5, before)
		if err != nil {
			t.Fatalf("History: %v", err)
		}
		pages++
		if len(page.Events) == 0 {
			t.Fatalf("page %d is empty: the page before it should have had next_before 0", pages)
		}
		if page.NextBefore == 0 {
			break
		}
		before = page.NextBefore
	}
	if pages != 5 {
		t.Errorf("25 events in pages of 5 took %d pages, want 5", pages)
	}

	var rerr *client.RPCError
	if _, err := c.History(ctx, "secret.t", 10, 0); !asRPCError(err, &rerr) || rerr.Code != -32003 {
		t.Errorf("History of a topic the token may not subscribe to = %v, want -32003", err)
	}
	if _, err := c.History(ctx, "h.*", 10, 0); !asRPCError(err, &rerr) || rerr.Code != -32602 {
		t.Errorf("History of a pattern = %v, want -32602", err)
	}

	code, body := getJSON(t, sc, "/v1/history?topic=h.t&limit=5")
	events, _ := body["events"].([]any)
	if code != http.StatusOK || len(events) != 5 || body["next_before"] == float64(0) {
		t.Errorf("GET /v1/history = %d %v, want 5 events and a next_before", code, body)
	}
}

func asRPCError(err error, target **client.RPCError) bool {
	return errors.As(err, target)
}

// getJSON sends GET path with the API key and decodes the JSON body.
func getJSON(t *testing.T, sc *sidecar, path string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, sc.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

// Info with characters that JSON encoders like to escape still fits, and
// its join event arrives.
func TestPresenceJoinEventKeepsInfo(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	ctx := ctxLong(t)
	c := dialToken(t, sc, presenceToken(t, "hana"))
	watch := subscribe(t, c, []string{"presence.room.x"})

	info := strings.Repeat("<&>", 680) // 2,040 bytes with its quotes
	if err := c.JoinPresence(ctx, "room.x", info); err != nil {
		t.Fatal(err)
	}
	d := nextPresence(t, watch)
	var got string
	if err := json.Unmarshal(d.Info, &got); err != nil || got != info {
		t.Errorf("join event info = %.40s…, %v, want the info as given", d.Info, err)
	}
}
