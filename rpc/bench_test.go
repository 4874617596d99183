package rpc

import (
	"strings"
	"testing"
)

// BenchmarkDecode measures Decode of a subscribe request, a publish request
// with 100 bytes of JSON data, and an event notification shaped like the
// hub's event frames.
func BenchmarkDecode(b *testing.B) {
	data := `{"user":"alice","text":"` + strings.Repeat("x", 100-len(`{"user":"alice","text":""}`)) + `"}`
	cases := []struct {
		name string
		msg  string
		kind Kind
	}{
		{
			name: "subscribe",
			msg:  `{"jsonrpc":"2.0","id":17,"method":"subscribe","params":{"topics":["orders.*","chat.room1"],"since":1200}}`,
			kind: KindRequest,
		},
		{
			name: "publish",
			msg:  `{"jsonrpc":"2.0","id":18,"method":"publish","params":{"topic":"chat.room1","data":` + data + `}}`,
			kind: KindRequest,
		},
		{
			name: "event",
			msg:  `{"jsonrpc":"2.0","method":"event","params":{"topic":"chat.room1","data":` + data + `,"id":4711,"ts":"2026-12-04T10:00:00.123456Z","subscription":"s1"}}`,
			kind: KindNotification,
		},
	}

	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			in := []byte(tc.msg)
			if msg, err := Decode(in); err != nil || msg.Kind != tc.kind {
				b.Fatalf("Decode(%s) = %v, %v, want kind %v", in, msg.Kind, err, tc.kind)
			}

			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			for b.Loop() {
				Decode(in)
			}
		})
	}
}
