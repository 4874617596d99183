package store

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// macHexLen is the length of the authenticator that starts every signed
// notification: 16 bytes of HMAC-SHA256, in hex.
const macHexLen = 32

// MaxSignedPayload is the largest payload that still fits in one NOTIFY
// once signed.
const MaxSignedPayload = 7999 - macHexLen

// NotifyKey signs and checks the notifications that sidecars and the
// realtime functions send each other. Only the schema's owner can read the
// key, so a role that may merely connect cannot forge a notification. A
// NotifyKey is immutable and safe for concurrent use.
type NotifyKey struct {
	key []byte
}

// NewNotifyKey returns a NotifyKey for key.
func NewNotifyKey(key []byte) *NotifyKey {
	return &NotifyKey{key: append([]byte(nil), key...)}
}

// LoadNotifyKey reads the database's notification key. It fails when the
// migrations that create it have not run, or when the role may not read it.
func (s *Store) LoadNotifyKey(ctx context.Context) (*NotifyKey, error) {
	var key []byte
	if err := s.pool.QueryRow(ctx, "SELECT key FROM realtime.notify_key").Scan(&key); err != nil {
		return nil, fmt.Errorf("read the notification key from realtime.notify_key (the sidecar's role must own the realtime schema): %w", err)
	}
	if len(key) == 0 {
		return nil, errors.New("read the notification key: realtime.notify_key contains an empty key, which only a change by hand can cause: store 32 random bytes in it")
	}
	return NewNotifyKey(key), nil
}

// Sign returns payload prefixed with its authenticator for channel, as
// the realtime.sign function does.
func (k *NotifyKey) Sign(channel, payload string) string {
	return hex.EncodeToString(k.mac(channel, payload)) + payload
}

// Open checks the authenticator of a signed notification of channel and
// returns the payload without it. It reports false for a payload that is
// unsigned or signed with another key.
func (k *NotifyKey) Open(channel, signed string) (string, bool) {
	if len(signed) < macHexLen {
		return "", false
	}
	got, err := hex.DecodeString(signed[:macHexLen])
	if err != nil {
		return "", false
	}
	payload := signed[macHexLen:]
	if !hmac.Equal(got, k.mac(channel, payload)) {
		return "", false
	}
	return payload, true
}

func (k *NotifyKey) mac(channel, payload string) []byte {
	m := hmac.New(sha256.New, k.key)
	m.Write([]byte(channel))
	m.Write([]byte{':'})
	m.Write([]byte(payload))
	return m.Sum(nil)[:macHexLen/2]
}
