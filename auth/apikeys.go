package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
)

// APIKeys is the set of keys that the application presents to the HTTP API.
// The zero value contains no keys and accepts none. It is safe for
// concurrent use.
type APIKeys struct {
	// digests holds the SHA-256 of each key. Comparing digests of equal
	// length keeps the comparison time independent of the key lengths.
	digests [][sha256.Size]byte
}

// NewAPIKeys returns the set of keys, ignoring empty strings. With no keys
// left, every check fails, so the HTTP API rejects every request.
func NewAPIKeys(keys []string) APIKeys {
	var k APIKeys
	for _, key := range keys {
		if key == "" {
			continue
		}
		k.digests = append(k.digests, sha256.Sum256([]byte(key)))
	}
	return k
}

// Len returns the number of keys.
func (k APIKeys) Len() int { return len(k.digests) }

// Valid reports whether key is one of the keys. It compares key with every
// key in constant time, so the time taken does not reveal which key or how
// much of one matched. An empty key is never valid.
func (k APIKeys) Valid(key string) bool {
	if key == "" {
		return false
	}

	digest := sha256.Sum256([]byte(key))
	match := 0
	for _, d := range k.digests {
		match |= subtle.ConstantTimeCompare(digest[:], d[:])
	}
	return match == 1
}

// Check reports whether r carries a valid key as "Authorization: Bearer
// <key>". Keys in the query string are not accepted.
func (k APIKeys) Check(r *http.Request) bool {
	key, ok := BearerToken(r.Header.Get("Authorization"))
	return ok && k.Valid(key)
}
