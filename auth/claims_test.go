package auth

import (
	"testing"

	"github.com/pgsidecar/sidecar/topic"
)

func mustSet(t *testing.T, patterns ...string) topic.Set {
	t.Helper()
	set, err := topic.ParseSet(patterns)
	if err != nil {
		t.Fatalf("ParseSet(%q): %v", patterns, err)
	}
	return set
}

func TestCanSubscribe(t *testing.T) {
	tests := []struct {
		claim   []string
		pattern string
		want    bool
	}{
		{[]string{"orders.>"}, "orders.*", true},
		{[]string{"orders.>"}, "orders.42", true},
		{[]string{"orders.>"}, "orders.42.lines", true},
		{[]string{"orders.>"}, "orders.>", true},
		{[]string{"orders.>"}, "orders", false},
		{[]string{"orders.*"}, "orders.>", false},
		{[]string{"orders.*"}, "orders.42", true},
		{[]string{"orders.*"}, "orders.42.lines", false},
		{[]string{">"}, "orders.>", true},
		{[]string{">"}, "db.public.users", false},
		{[]string{">"}, "db.>", false},
		{[]string{"*.>"}, "db.public.users", false},
		{[]string{"*.*.*"}, "db.public.users", false},
		{[]string{"db.>"}, "db.public.users", true},
		{[]string{"db.public.*"}, "db.public.users", true},
		{[]string{"chat.*", "orders.>"}, "orders.1", true},
		{nil, "orders.1", false},
	}
	for _, tt := range tests {
		c := &Claims{Subject: "u", Subscribe: mustSet(t, tt.claim...)}
		if got := c.CanSubscribe(topic.MustParse(tt.pattern)); got != tt.want {
			t.Errorf("claim %q: CanSubscribe(%q) = %v, want %v", tt.claim, tt.pattern, got, tt.want)
		}
	}
}

func TestCanPublish(t *testing.T) {
	tests := []struct {
		claim []string
		topic string
		want  bool
	}{
		{[]string{"chat.*"}, "chat.room1", true},
		{[]string{"chat.*"}, "chat.room1.x", false},
		{[]string{"chat.*"}, "chat.*", false},
		{[]string{"chat.>"}, "chat.>", false},
		{[]string{"chat.*"}, "chat..x", false},
		{[]string{"chat.*"}, "", false},
		{[]string{">"}, "orders.1", true},
		{[]string{">"}, "db.public.users", false},
		{[]string{">"}, "sys.drain", false},
		{[]string{"*"}, "presence", false},
		{[]string{"db.>"}, "db.public.users", true},
		{[]string{"presence.room1"}, "presence.room1", true},
		{nil, "chat.room1", false},
	}
	for _, tt := range tests {
		c := &Claims{Subject: "u", Publish: mustSet(t, tt.claim...)}
		if got := c.CanPublish(tt.topic); got != tt.want {
			t.Errorf("claim %q: CanPublish(%q) = %v, want %v", tt.claim, tt.topic, got, tt.want)
		}
	}
}

func TestCanCall(t *testing.T) {
	tests := []struct {
		claim  []string
		method string
		want   bool
	}{
		{[]string{"app.orders.*"}, "app.orders.create", true},
		{[]string{"app.orders.*"}, "app.users.get", false},
		{[]string{"app.orders.*"}, "app.orders", false},
		{[]string{"app.>"}, "app.anything.at.all", true},
		{[]string{">"}, "app.x", true},
		{[]string{">"}, "ping", false},
		{[]string{">"}, "subscribe", false},
		{[]string{"app.>"}, "app.", false},
		{[]string{"app.>"}, "app.a b", false},
		{nil, "app.x", false},
	}
	for _, tt := range tests {
		c := &Claims{Subject: "u", Call: mustSet(t, tt.claim...)}
		if got := c.CanCall(tt.method); got != tt.want {
			t.Errorf("claim %q: CanCall(%q) = %v, want %v", tt.claim, tt.method, got, tt.want)
		}
	}
}

func TestNilClaimsGrantNothing(t *testing.T) {
	var c *Claims
	if c.CanSubscribe(topic.MustParse(">")) {
		t.Errorf("nil CanSubscribe(>) = true, want false")
	}
	if c.CanPublish("chat.1") {
		t.Errorf("nil CanPublish(chat.1) = true, want false")
	}
	if c.CanCall("app.x") {
		t.Errorf("nil CanCall(app.x) = true, want false")
	}
}

func TestAnonymous(t *testing.T) {
	if c := Anonymous(nil, nil); c != nil {
		t.Errorf("Anonymous(nil, nil) = %+v, want nil (anonymous access off)", c)
	}
	if c := Anonymous(topic.Set{}, topic.Set{}); c != nil {
		t.Errorf("Anonymous(empty, empty) = %+v, want nil (anonymous access off)", c)
	}

	c := Anonymous(mustSet(t, "public.>"), mustSet(t, "public.chat"))
	if c == nil {
		t.Fatal("Anonymous(public.>, public.chat) = nil, want claims")
	}
	if !c.Anonymous {
		t.Errorf("Anonymous field = false, want true")
	}
	if c.Subject != "" {
		t.Errorf("Subject = %q, want empty", c.Subject)
	}
	if !c.Expires.IsZero() {
		t.Errorf("Expires = %v, want the zero time", c.Expires)
	}
	if !c.CanSubscribe(topic.MustParse("public.news")) {
		t.Errorf("CanSubscribe(public.news) = false, want true")
	}
	if c.CanSubscribe(topic.MustParse("private.x")) {
		t.Errorf("CanSubscribe(private.x) = true, want false")
	}
	if !c.CanPublish("public.chat") {
		t.Errorf("CanPublish(public.chat) = false, want true")
	}
	if c.CanPublish("public.news") {
		t.Errorf("CanPublish(public.news) = true, want false")
	}
	if c.CanCall("app.x") {
		t.Errorf("CanCall(app.x) = true, want false")
	}

	subscribeOnly := Anonymous(mustSet(t, "public.>"), nil)
	if subscribeOnly == nil || subscribeOnly.CanPublish("public.chat") {
		t.Errorf("Anonymous(public.>, nil) = %+v, want claims that cannot publish", subscribeOnly)
	}
}
