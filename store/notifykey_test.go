package store

import "testing"

func TestNotifyKeyOpensOnlyWhatItSigned(t *testing.T) {
	k := NewNotifyKey([]byte("0123456789abcdef0123456789abcdef"))
	other := NewNotifyKey([]byte("another key, of another database"))
	signed := k.Sign(Channel, `{"k":"b","t":"a"}`)

	if got, ok := k.Open(Channel, signed); !ok || got != `{"k":"b","t":"a"}` {
		t.Fatalf("Open(signed) = %q, %v; want the payload, true", got, ok)
	}

	refused := map[string]struct{ channel, payload string }{
		"another key":           {Channel, other.Sign(Channel, `{"k":"b","t":"a"}`)},
		"another channel":       {"realtime_rpc", signed},
		"payload changed":       {Channel, signed[:len(signed)-1] + "b}"},
		"authenticator changed": {Channel, "0" + signed[1:]},
		"upper-case hex":        {Channel, "A" + signed[1:]},
		"unsigned":              {Channel, `{"k":"b","t":"a"}`},
		"short":                 {Channel, "abc"},
		"empty":                 {Channel, ""},
	}
	for name, tt := range refused {
		if got, ok := k.Open(tt.channel, tt.payload); ok {
			t.Errorf("Open(%s) = %q, true; want refused", name, got)
		}
	}
}
