package tests

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// A client may send its first frames in the same packet as its upgrade
// request. The sidecar must read them from what net/http had already
// buffered, before it reads from the socket, and respond to them in order,
// whether they fit in the sidecar's small read buffer or not.
func TestUpgradeKeepsFramesSentWithTheRequest(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	small := maskedText(`{"jsonrpc":"2.0","id":1,"method":"ping"}`)
	large := maskedText(`{"jsonrpc":"2.0","id":2,"method":"ping","params":{"pad":"` + strings.Repeat("x", 3000) + `"}}`)

	cases := []struct {
		name         string
		early, later []byte
	}{
		{"small frame buffered, large one read later", small, large},
		{"both frames buffered", append(slices.Clone(small), large...), nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, r := upgradeWith(t, sc, tc.early)
			if got := readServerFrame(t, r); !strings.Contains(got, `"method":"welcome"`) {
				t.Errorf("first message = %s, want the welcome", got)
			}
			if got := readServerFrame(t, r); !strings.Contains(got, `"id":1`) || !strings.Contains(got, `"result"`) {
				t.Errorf("second message = %s, want the result of request 1", got)
			}
			if tc.later != nil {
				if _, err := conn.Write(tc.later); err != nil {
					t.Fatal(err)
				}
			}
			if got := readServerFrame(t, r); !strings.Contains(got, `"id":2`) || !strings.Contains(got, `"result"`) {
				t.Errorf("third message = %s, want the result of request 2", got)
			}
		})
	}
}

// upgradeWith sends an upgrade request to sc's websocket endpoint followed
// by early in one write, and returns the connection and a reader
// positioned after the 101 response.
func upgradeWith(t *testing.T, sc *sidecar, early []byte) (net.Conn, *bufio.Reader) {
	t.Helper()

	host := strings.TrimPrefix(sc.base, "http://")
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(waitLong))

	tok := token(t, "early-client", []string{"early.>"}, nil)
	var out bytes.Buffer
	out.WriteString("GET /v1/ws HTTP/1.1\r\nHost: " + host + "\r\n" +
		"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer " + tok + "\r\n\r\n")
	out.Write(early)
	if _, err := conn.Write(out.Bytes()); err != nil {
		t.Fatal(err)
	}

	r := bufio.NewReader(conn)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("read the upgrade response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade status = %d, want 101", resp.StatusCode)
	}
	return conn, r
}

// maskedText encodes payload as one masked text frame, as a client sends it.
func maskedText(payload string) []byte {
	var b bytes.Buffer
	b.WriteByte(0x81)
	switch n := len(payload); {
	case n < 126:
		b.WriteByte(0x80 | byte(n))
	case n < 1<<16:
		b.WriteByte(0x80 | 126)
		_ = binary.Write(&b, binary.BigEndian, uint16(n))
	default:
		b.WriteByte(0x80 | 127)
		_ = binary.Write(&b, binary.BigEndian, uint64(n))
	}
	key := []byte{0x12, 0x34, 0x56, 0x78}
	b.Write(key)
	for i := range len(payload) {
		b.WriteByte(payload[i] ^ key[i%4])
	}
	return b.Bytes()
}

// readServerFrame reads one unmasked, unfragmented text frame.
func readServerFrame(t *testing.T, r *bufio.Reader) string {
	t.Helper()

	var head [2]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		t.Fatalf("read a frame header: %v", err)
	}
	if head[0] != 0x81 {
		t.Fatalf("frame header byte 0x%02x, want 0x81 (a final text frame)", head[0])
	}
	n := uint64(head[1] & 0x7f)
	switch n {
	case 126:
		var ext uint16
		if err := binary.Read(r, binary.BigEndian, &ext); err != nil {
			t.Fatal(err)
		}
		n = uint64(ext)
	case 127:
		if err := binary.Read(r, binary.BigEndian, &n); err != nil {
			t.Fatal(err)
		}
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		t.Fatalf("read a frame payload: %v", err)
	}
	return string(payload)
}
