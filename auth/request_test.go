package auth

import (
	"net/http/httptest"
	"net/url"
	"testing"
)

func TestTokenFromRequest(t *testing.T) {
	tests := []struct {
		name      string
		target    string
		header    string
		wantToken string
		wantOK    bool
	}{
		{"none", "/v1/ws", "", "", false},
		{"header", "/v1/ws", "Bearer abc", "abc", true},
		{"header scheme lower case", "/v1/ws", "bearer abc", "abc", true},
		{"header scheme upper case", "/v1/ws", "BEARER abc", "abc", true},
		{"header extra spaces", "/v1/ws", "Bearer   abc  ", "abc", true},
		{"query", "/v1/ws?access_token=q1", "", "q1", true},
		{"query escaped", "/v1/ws?access_token=a%2Eb", "", "a.b", true},
		{"header wins over query", "/v1/ws?access_token=q1", "Bearer h1", "h1", true},
		{"other scheme falls back to query", "/v1/ws?access_token=q1", "Basic dXNlcjpwdw==", "q1", true},
		{"other scheme alone", "/v1/ws", "Basic dXNlcjpwdw==", "", false},
		{"empty bearer counts as presented", "/v1/ws", "Bearer", "", true},
		{"empty query value counts as presented", "/v1/ws?access_token=", "", "", true},
		{"first query value", "/v1/ws?access_token=a&access_token=b", "", "a", true},
		{"other parameter", "/v1/ws?token=x", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", tt.target, nil)
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}

			token, ok := TokenFromRequest(r)
			if token != tt.wantToken || ok != tt.wantOK {
				t.Errorf("TokenFromRequest = (%q, %v), want (%q, %v)", token, ok, tt.wantToken, tt.wantOK)
			}
		})
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"/v1/ws", "/v1/ws"},
		{"/v1/ws?since=5", "/v1/ws?since=5"},
		{"/v1/ws?access_token=secret", "/v1/ws?access_token=REDACTED"},
		{"/v1/events?topic=a.*&access_token=secret&since=4", "/v1/events?topic=a.*&access_token=REDACTED&since=4"},
		{"/v1/ws?access_token=one&access_token=two", "/v1/ws?access_token=REDACTED&access_token=REDACTED"},
		{"/v1/ws?access%5Ftoken=secret", "/v1/ws?access_token=REDACTED"},
		{"/v1/ws?ACCESS_TOKEN=secret", "/v1/ws?access_token=REDACTED"},
		{"/v1/ws?a=1;access_token=secret", "/v1/ws?a=1;access_token=REDACTED"},
		{"/v1/ws?access_token", "/v1/ws?access_token=REDACTED"},
		{"/v1/ws?b=2&a=%zz", "/v1/ws?b=2&a=%zz"},
		{"/v1/a%20b?x=1", "/v1/a%20b?x=1"},
		{"http://example.com/v1/ws?access_token=s", "/v1/ws?access_token=REDACTED"},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.in)
		if err != nil {
			t.Fatalf("url.Parse(%q): %v", tt.in, err)
		}
		if got := RedactURL(u); got != tt.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if u.String() != tt.in {
			t.Errorf("RedactURL(%q) changed its argument to %q", tt.in, u.String())
		}
	}
}
