package auth

import (
	"net/http/httptest"
	"testing"
)

func TestAPIKeysValid(t *testing.T) {
	keys := NewAPIKeys([]string{"key-one", "", "key-two"})
	if keys.Len() != 2 {
		t.Errorf("Len() = %d, want 2 (empty keys ignored)", keys.Len())
	}

	tests := []struct {
		key  string
		want bool
	}{
		{"key-one", true},
		{"key-two", true},
		{"key-on", false},
		{"key-one ", false},
		{"KEY-ONE", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := keys.Valid(tt.key); got != tt.want {
			t.Errorf("Valid(%q) = %v, want %v", tt.key, got, tt.want)
		}
	}
}

func TestAPIKeysNoneConfigured(t *testing.T) {
	for name, keys := range map[string]APIKeys{
		"zero value": {},
		"nil list":   NewAPIKeys(nil),
		"only empty": NewAPIKeys([]string{""}),
	} {
		if keys.Valid("anything") {
			t.Errorf("%s: Valid(anything) = true, want false", name)
		}
		if keys.Valid("") {
			t.Errorf("%s: Valid(\"\") = true, want false", name)
		}
	}
}

func TestAPIKeysCheck(t *testing.T) {
	keys := NewAPIKeys([]string{"k1"})
	tests := []struct {
		name   string
		target string
		header string
		want   bool
	}{
		{"bearer", "/v1/publish", "Bearer k1", true},
		{"bearer lower case", "/v1/publish", "bearer k1", true},
		{"wrong key", "/v1/publish", "Bearer k2", false},
		{"no header", "/v1/publish", "", false},
		{"other scheme", "/v1/publish", "Basic k1", false},
		{"query not accepted", "/v1/publish?access_token=k1", "", false},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("POST", tt.target, nil)
		if tt.header != "" {
			r.Header.Set("Authorization", tt.header)
		}
		if got := keys.Check(r); got != tt.want {
			t.Errorf("%s: Check = %v, want %v", tt.name, got, tt.want)
		}
	}
}
