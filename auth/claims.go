package auth

import (
	"strings"
	"time"

	"github.com/pgsidecar/sidecar/topic"
)

// Claims are the rights of one client, from a verified token or from the
// anonymous configuration. A nil *Claims grants nothing, so its methods
// return false. Verify and Anonymous return new Claims that this package
// never modifies, so concurrent reads are safe.
type Claims struct {
	// Subject is the token's "sub" claim, never empty for a token. It is
	// empty for anonymous clients, so that no token subject can address
	// them.
	Subject string

	// Expires is the token's "exp" claim. It is the zero time for
	// anonymous clients, whose rights do not expire.
	Expires time.Time

	// Subscribe, Publish, Call and Presence are the patterns of the
	// matching lists of the "realtime" claim. A missing list is empty and
	// grants nothing.
	Subscribe topic.Set
	Publish   topic.Set
	Call      topic.Set
	Presence  topic.Set

	// Anonymous is true for the claims returned by Anonymous.
	Anonymous bool
}

// CanSubscribe reports whether the claims allow a subscription to p: every
// topic p can match must be matched by some subscribe pattern. So
// "orders.>" allows "orders.*", but "orders.*" does not allow "orders.>".
//
// A pattern presence.<q> is also allowed when the presence patterns allow
// q, so that a client allowed presence on a topic can follow its join and
// leave events.
func (c *Claims) CanSubscribe(p topic.Pattern) bool {
	if c == nil {
		return false
	}
	if c.Subscribe.Allows(p) {
		return true
	}
	if rest, ok := strings.CutPrefix(p.String(), "presence."); ok {
		if q, err := topic.Parse(rest); err == nil {
			return c.Presence.Allows(q)
		}
	}
	return false
}

// CanPresence reports whether the claims allow joining, leaving, listing
// and counting the presence of topic t, a concrete topic matched by some
// presence pattern.
func (c *Claims) CanPresence(t string) bool {
	if c == nil || topic.Validate(t) != nil {
		return false
	}
	return c.Presence.AllowsTopic(t)
}

// CanPublish reports whether the claims allow publishing to topic t. It is
// false unless t is a concrete topic matched by some publish pattern. A
// reserved namespace such as db. is matched only by a pattern that names it
// literally.
func (c *Claims) CanPublish(t string) bool {
	if c == nil || topic.Validate(t) != nil {
		return false
	}
	return c.Publish.AllowsTopic(t)
}

// CanCall reports whether the claims allow calling the application method
// named method, including its "app." prefix, such as "app.orders.create".
// It is false for methods outside the app. namespace, which call patterns
// do not govern, and for names that are not valid topics.
func (c *Claims) CanCall(method string) bool {
	if c == nil || !strings.HasPrefix(method, "app.") || topic.Validate(method) != nil {
		return false
	}
	return c.Call.AllowsTopic(method)
}

// Anonymous returns the claims of clients without a token, or nil when
// both sets are empty, which means anonymous access is off. The claims
// have no subject, never expire, and allow no calls and no presence.
func Anonymous(subscribe, publish topic.Set) *Claims {
	if len(subscribe) == 0 && len(publish) == 0 {
		return nil
	}
	return &Claims{
		Subscribe: subscribe,
		Publish:   publish,
		Anonymous: true,
	}
}
