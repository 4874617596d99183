package hub

import (
	"bytes"
	"strconv"
	"unicode/utf8"
)

// The event notification is split around the subscription id, so that
// Publish encodes an event once and each receiver adds only its id:
//
//	{"jsonrpc":"2.0","method":"event","params":{"topic":T,"data":D,"id":N,"ts":TS,"subscription":"s1"}}
const (
	framePrefixHead = `{"jsonrpc":"2.0","method":"event","params":{"topic":`
	frameSuffix     = `"}}`
)

// IsEventFrame reports whether msg, a message the hub gave to a Sink, is an
// event notification, so that a sink can rewrite events for another
// protocol and pass everything else through.
func IsEventFrame(msg []byte) bool {
	return bytes.HasPrefix(msg, []byte(framePrefixHead))
}

// encodePrefix returns the event notification for ev up to and including
// the opening quote of the subscription id. The id field is omitted for
// ephemeral events, and empty data is encoded as null.
func encodePrefix(ev Event) []byte {
	data := ev.Data
	if len(data) == 0 {
		data = []byte("null")
	}

	// The capacity suffices unless the topic or timestamp need escapes.
	size := len(framePrefixHead) + len(ev.Topic) + len(data) + len(ev.TS) + 64
	b := make([]byte, 0, size)

	b = append(b, framePrefixHead...)
	b = appendJSONString(b, ev.Topic)
	b = append(b, `,"data":`...)
	b = append(b, data...)
	if ev.ID > 0 {
		b = append(b, `,"id":`...)
		b = strconv.AppendInt(b, ev.ID, 10)
	}
	b = append(b, `,"ts":`...)
	b = appendJSONString(b, ev.TS)
	b = append(b, `,"subscription":"`...)
	return b
}

// appendJSONString appends s as a JSON string. Invalid UTF-8 becomes
// U+FFFD, as encoding/json does.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"

	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				b = append(b, s[start:i]...)
				b = append(b, `\ufffd`...)
				start = i + size
			}
			i += size
			continue
		}
		if c >= 0x20 && c != '"' && c != '\\' {
			i++
			continue
		}

		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, `\n`...)
		case '\r':
			b = append(b, `\r`...)
		case '\t':
			b = append(b, `\t`...)
		default:
			b = append(b, `\u00`...)
			b = append(b, hex[c>>4], hex[c&0xf])
		}
		i++
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// item is one queued message. For an event notification, msg is the prefix
// shared by all receivers of the event and sub is the subscription id. For
// a message given to Client.Send, msg is the whole message and sub is empty.
type item struct {
	msg []byte
	sub string
	// published is the live event's publish time in Unix nanoseconds, or
	// zero for other messages and replayed events.
	published int64
}

// size returns the length of the message that item stands for.
func (it item) size() int {
	if it.sub == "" {
		return len(it.msg)
	}
	return len(it.msg) + len(it.sub) + len(frameSuffix)
}

// appendTo appends the complete message to b.
func (it item) appendTo(b []byte) []byte {
	b = append(b, it.msg...)
	if it.sub == "" {
		return b
	}
	b = append(b, it.sub...)
	return append(b, frameSuffix...)
}

// ring is a FIFO queue of items in a growable ring buffer, whose length is
// zero or a power of two. The zero value is an empty queue.
type ring struct {
	buf  []item
	head int
	n    int
}

// ringKeepCap is the largest buffer that an emptied ring keeps for reuse.
// A larger one, left by a burst, is released.
const ringKeepCap = 1024

func (r *ring) len() int { return r.n }

func (r *ring) push(it item) {
	if r.n == len(r.buf) {
		r.grow()
	}
	r.buf[(r.head+r.n)&(len(r.buf)-1)] = it
	r.n++
}

func (r *ring) pop() (item, bool) {
	if r.n == 0 {
		return item{}, false
	}

	it := r.buf[r.head]
	r.buf[r.head] = item{}
	r.head = (r.head + 1) & (len(r.buf) - 1)
	r.n--

	if r.n == 0 {
		r.head = 0
		if len(r.buf) > ringKeepCap {
			r.buf = nil
		}
	}
	return it, true
}

func (r *ring) grow() {
	// Start small: most clients never have more than a few messages
	// queued, and the ring is kept while the client is idle.
	size := max(4, 2*len(r.buf))
	buf := make([]item, size)
	for i := range r.n {
		buf[i] = r.buf[(r.head+i)&(len(r.buf)-1)]
	}
	r.buf = buf
	r.head = 0
}

// reset drops every item.
func (r *ring) reset() {
	*r = ring{}
}
