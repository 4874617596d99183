package tests

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/pgsidecar/sidecar/client"
	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// writeJWKS writes the public halves of keys, each under its kid, as a
// JSON Web Key Set.
func writeJWKS(t *testing.T, path string, keys map[string]*ecdsa.PrivateKey) {
	t.Helper()
	set := jwk.NewSet()
	for kid, k := range keys {
		key, err := jwk.Import(&k.PublicKey)
		if err != nil {
			t.Fatalf("import key: %v", err)
		}
		if err := key.Set(jwk.KeyIDKey, kid); err != nil {
			t.Fatalf("set kid: %v", err)
		}
		if err := set.AddKey(key); err != nil {
			t.Fatalf("add key: %v", err)
		}
	}
	data, err := json.Marshal(set)
	if err != nil {
		t.Fatalf("marshal key set: %v", err)
	}
	// Written beside and renamed, as a Kubernetes volume update does.
	if err := os.WriteFile(path+".new", data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// signed returns a token of method, signed by key, with the kid header and
// the given claims on top of a valid subject, expiry and rights.
func signed(t *testing.T, method jwt.SigningMethod, key any, kid string, extra jwt.MapClaims) string {
	t.Helper()
	claims := jwt.MapClaims{
		"sub":      "key-user",
		"exp":      time.Now().Add(time.Hour).Unix(),
		"realtime": map[string]any{"subscribe": []string{"keys.>"}},
	}
	for k, v := range extra {
		claims[k] = v
	}
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return s
}

// upgradeStatus dials with tok in the Authorization header and returns
// the HTTP status: 101 when the websocket opened.
func upgradeStatus(t *testing.T, sc *sidecar, tok string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, sc.ws, &websocket.DialOptions{HTTPHeader: authHeader(tok)})
	if err == nil {
		conn.CloseNow()
		return http.StatusSwitchingProtocols
	}
	if resp == nil {
		t.Fatalf("dial: %v", err)
	}
	return resp.StatusCode
}

func TestPublicKeyTokens(t *testing.T) {
	db := pgtest.NewDatabase(t)
	ec1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ec2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)

	dir := t.TempDir()
	jwksPath := filepath.Join(dir, "jwks.json")
	writeJWKS(t, jwksPath, map[string]*ecdsa.PrivateKey{"2026-a": ec1})
	der, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pemPath := filepath.Join(dir, "rsa.pem")
	if err := os.WriteFile(pemPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}

	sc := startSidecar(t, db, func(c *server.Config) {
		c.JWKSFile = jwksPath
		c.JWTPublicKeyFile = pemPath
		c.JWTAudience = "realtime"
	})
	aud := jwt.MapClaims{"aud": "realtime"}

	t.Run("ES256 token with a known kid subscribes and receives", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		c, err := client.Dial(ctx, sc.ws, client.Options{Token: signed(t, jwt.SigningMethodES256, ec1, "2026-a", aud)})
		if err != nil {
			t.Fatalf("dial with an ES256 token: %v", err)
		}
		defer c.Close()
		sub := subscribe(t, c, []string{"keys.>"})
		postJSON(t, sc, "/v1/publish", testAPIKey, map[string]any{"topic": "keys.one", "data": 1})
		if ev := next(t, sub); ev.Topic != "keys.one" {
			t.Fatalf("event = %s, want keys.one", ev.Topic)
		}
	})

	t.Run("RS256 token from the PEM file authenticates with an auth message", func(t *testing.T) {
		rc := dialRaw(t, sc, nil)
		rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 1, "method": "auth", "params": {"token": "`+signed(t, jwt.SigningMethodRS256, rsaKey, "", aud)+`"}}`)
		res, _ := rc.read()["result"].(map[string]any)
		if res["sub"] != "key-user" {
			t.Fatalf("auth with an RS256 token = %v, want sub key-user", res)
		}
	})

	refused := []struct {
		name  string
		token string
	}{
		{"unknown kid", signed(t, jwt.SigningMethodES256, ec2, "2026-b", aud)},
		{"known kid, wrong key", signed(t, jwt.SigningMethodES256, ec2, "2026-a", aud)},
		{"alg none", signed(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "2026-a", aud)},
		{"expired", signed(t, jwt.SigningMethodES256, ec1, "2026-a", jwt.MapClaims{"aud": "realtime", "exp": time.Now().Add(-time.Hour).Unix()})},
		{"not yet valid", signed(t, jwt.SigningMethodES256, ec1, "2026-a", jwt.MapClaims{"aud": "realtime", "nbf": time.Now().Add(time.Hour).Unix()})},
		{"no audience", signed(t, jwt.SigningMethodES256, ec1, "2026-a", nil)},
		{"another audience", signed(t, jwt.SigningMethodES256, ec1, "2026-a", jwt.MapClaims{"aud": "billing"})},
		{"HS256 keyed with the PEM file", signed(t, jwt.SigningMethodHS256, mustRead(t, pemPath), "", aud)},
	}
	for _, tt := range refused {
		t.Run("refused: "+tt.name, func(t *testing.T) {
			if got := upgradeStatus(t, sc, tt.token); got != http.StatusUnauthorized {
				t.Fatalf("upgrade = %d, want 401", got)
			}
		})
	}

	t.Run("a key added to the JWKS file is used without a restart", func(t *testing.T) {
		tok := signed(t, jwt.SigningMethodES256, ec2, "2026-b", aud)
		writeJWKS(t, jwksPath, map[string]*ecdsa.PrivateKey{"2026-a": ec1, "2026-b": ec2})
		// An unknown kid rereads the file at most once a second.
		waitFor(t, "the new key to be accepted", func() bool {
			return upgradeStatus(t, sc, tok) == http.StatusSwitchingProtocols
		})
	})
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
