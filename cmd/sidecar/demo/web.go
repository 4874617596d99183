package demo

import (
	"embed"
	"encoding/json"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/pgsidecar/sidecar/auth"
	jsclient "github.com/pgsidecar/sidecar/js"
)

//go:embed static
var static embed.FS

// PageSubject is the token subject of the demo page's connections.
const PageSubject = "demo-page"

// pageTokenTTL is how long a token from /dev/token stays valid. The page
// fetches a new one each time it connects.
const pageTokenTTL = time.Hour

// PageRights returns the rights of the demo page's token: the todos
// table's events and the todo methods, nothing else.
func PageRights() auth.Realtime {
	return auth.Realtime{
		Subscribe: []string{"db.public.todos"},
		Call:      []string{"app.todos.*"},
	}
}

// Handler serves the demo page and passes every other request to
// sidecar:
//
//	GET /           the page (index.html, app.js, style.css)
//	GET /client.js  the browser client of the sidecar
//	GET /dev/token  {"token": JWT} with PageRights, signed with secret,
//	                for loopback clients only
//
// The token endpoint exists for development only: any loopback process
// that reaches it gets a token. The sidecar's "serve" command never
// mounts this handler.
func Handler(sidecar http.Handler, secret []byte, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	page, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded folder is part of the build
	}
	files := http.FileServerFS(page)

	mux := http.NewServeMux()
	mux.Handle("/", sidecar)
	for _, path := range []string{"GET /{$}", "GET /app.js", "GET /style.css"} {
		mux.Handle(path, noCache(files))
	}
	mux.Handle("GET /client.js", noCache(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		_, _ = w.Write(jsclient.Source)
	})))
	mux.HandleFunc("GET /dev/token", func(w http.ResponseWriter, r *http.Request) {
		serveToken(w, r, secret, log)
	})
	return mux
}

// serveToken signs a page token for a request that came from loopback
// and names a loopback host. The Host check keeps a page of another site
// whose name resolves to 127.0.0.1 from fetching a token.
func serveToken(w http.ResponseWriter, r *http.Request, secret []byte, log *slog.Logger) {
	if !isLoopback(r.RemoteAddr) || !isLoopbackHost(r.Host) {
		http.Error(w, "the dev token is served to loopback clients of a loopback host only", http.StatusForbidden)
		return
	}

	token, err := auth.Sign(secret, PageSubject, PageRights(), pageTokenTTL)
	if err != nil {
		log.Error("sign the demo page's token", "err", err)
		http.Error(w, "signing the token failed: see the sidecar's log", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(map[string]string{"token": token})
}

func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = strings.Trim(hostport, "[]")
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func isLoopbackHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = strings.Trim(hostport, "[]")
	}
	return host == "localhost" || isLoopback(host)
}

// noCache makes browsers revalidate the page's files, so that a rebuilt
// binary's page is seen on the next reload.
func noCache(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		h.ServeHTTP(w, r)
	})
}
