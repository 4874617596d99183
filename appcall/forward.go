package appcall

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/pgsidecar/sidecar/rpc"
)

// Request headers that tell the application who is calling.
const (
	HeaderClientID = "X-Sidecar-Client-Id"
	HeaderSubject  = "X-Sidecar-Subject"
)

// discardLimit is how much of an ignored body, such as the response to a
// notification or a non-2xx response, is read so that the connection can be
// reused. A longer body closes the connection instead.
const discardLimit = 64 << 10

// errTimedOut is the cancellation cause of a call that ran past the
// Forwarder's timeout. It distinguishes that case from the end of the
// caller's context.
var errTimedOut = errors.New("application call timed out")

// Forwarder sends app.<name> calls to the application. Create one with New.
// It is safe for concurrent use.
type Forwarder struct {
	url        string
	shownURL   string // url without user information and query, for logs
	token      string
	timeout    time.Duration
	maxBytes   int64
	client     *http.Client
	ownsClient bool
	log        *slog.Logger
	throttle   logThrottle
}

// Call is one app.<name> request or notification from a client.
type Call struct {
	// ClientID is the calling connection's client_id, sent in the
	// X-Sidecar-Client-Id header.
	ClientID string

	// Subject is the sub claim of the connection's token, sent in the
	// X-Sidecar-Subject header. It is empty for an anonymous connection,
	// and the header is then sent empty.
	Subject string

	// Method is the name without the "app." prefix.
	Method string

	// ID is the sidecar's own request id, a JSON string or number. Nil
	// makes the call a notification.
	ID json.RawMessage

	// Params are the client's params as raw JSON, omitted from the request
	// when nil.
	Params json.RawMessage
}

// Forward sends c to the application and waits for its response.
//
// For a request it returns the application's result as raw JSON, byte for
// byte, or the application's JSON-RPC error unchanged, with its data kept as
// raw JSON. Any other outcome returns a -32005 error whose message names what
// failed: the application was unreachable, did not answer within the
// timeout, answered with a non-2xx status, sent a body too large, or sent
// something other than a JSON-RPC response with the request's id.
//
// For a notification (c.ID nil) it returns (nil, nil) in every case. It
// waits for the application's status and ignores the body. Failures are
// logged, because there is no response to report them in.
//
// Params that are not valid JSON get -32602 without a request being sent.
// Cancelling ctx aborts the HTTP request, and a request then returns
// -32005. Failures are logged at most once per 5 s, and not at all when ctx
// has ended, because a client that went away is not a fault of the
// application.
func (f *Forwarder) Forward(ctx context.Context, c Call) (json.RawMessage, *rpc.Error) {
	if c.ID == nil {
		if rerr := f.notify(ctx, c); rerr != nil && ctx.Err() == nil {
			f.logFailure(c, rerr)
		}
		return nil, nil
	}

	result, appErr, failure := f.call(ctx, c)
	if failure != nil {
		if ctx.Err() == nil {
			f.logFailure(c, failure)
		}
		return nil, failure
	}
	if appErr != nil {
		return nil, appErr
	}
	return result, nil
}

// Close closes the idle connections of the client that New built. It does
// nothing for a client passed in Config.Client. Calls still in progress
// finish normally, and later calls open new connections.
func (f *Forwarder) Close() {
	if f.ownsClient {
		f.client.CloseIdleConnections()
	}
}

// call sends a request and decodes the response. It returns the result, or
// the application's error, or a -32005 failure.
func (f *Forwarder) call(ctx context.Context, c Call) (result json.RawMessage, appErr, failure *rpc.Error) {
	body := rpc.EncodeRequest(c.ID, c.Method, paramsValue(c.Params))
	if body == nil {
		return nil, nil, rpc.InvalidParams("params are not valid JSON")
	}

	callCtx, cancel := context.WithTimeoutCause(ctx, f.timeout, errTimedOut)
	defer cancel()

	resp, failure := f.post(ctx, callCtx, c, body)
	if failure != nil {
		return nil, nil, failure
	}
	defer resp.Body.Close()

	respBody, failure := f.readBody(ctx, callCtx, resp)
	if failure != nil {
		return nil, nil, failure
	}

	msg, failure := decodeResponse(respBody, c.ID)
	if failure != nil {
		return nil, nil, failure
	}
	if msg.Error != nil {
		return nil, msg.Error, nil
	}
	return msg.Result, nil, nil
}

// notify sends a notification and waits for a 2xx status.
func (f *Forwarder) notify(ctx context.Context, c Call) *rpc.Error {
	body := rpc.EncodeNotification(c.Method, paramsValue(c.Params))
	if body == nil {
		return rpc.InvalidParams("params are not valid JSON")
	}

	callCtx, cancel := context.WithTimeoutCause(ctx, f.timeout, errTimedOut)
	defer cancel()

	resp, failure := f.post(ctx, callCtx, c, body)
	if failure != nil {
		return failure
	}
	discard(resp.Body)
	return nil
}

// post sends body and returns the response when its status is 2xx. The
// caller must close the response body. ctx is the caller's context and
// callCtx the one bounded by the timeout. Together they distinguish a
// timeout from a cancellation.
func (f *Forwarder) post(ctx, callCtx context.Context, c Call, body []byte) (*http.Response, *rpc.Error) {
	if !validHeaderValue(c.ClientID) || !validHeaderValue(c.Subject) {
		return nil, failed("the client's id or subject contains control characters, which cannot be sent in an HTTP header")
	}

	req, err := http.NewRequestWithContext(callCtx, http.MethodPost, f.url, bytes.NewReader(body))
	if err != nil {
		// New has validated the URL, so this is not expected.
		return nil, failed("the request to the application cannot be built: %v", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set(HeaderClientID, c.ClientID)
	req.Header.Set(HeaderSubject, c.Subject)
	if f.token != "" {
		req.Header.Set("Authorization", "Bearer "+f.token)
	}

	resp, err := f.client.Do(req)
	if err != nil {
		return nil, f.transportFailure(ctx, callCtx, err)
	}

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		discard(resp.Body)
		return nil, failed("application answered HTTP %d%s", resp.StatusCode, statusText(resp.StatusCode))
	}
	return resp, nil
}

// readBody reads the whole body of resp, up to the size limit.
func (f *Forwarder) readBody(ctx, callCtx context.Context, resp *http.Response) ([]byte, *rpc.Error) {
	if resp.ContentLength > f.maxBytes {
		return nil, f.tooLarge()
	}

	body, err := io.ReadAll(io.LimitReader(resp.Body, f.maxBytes+1))
	if err != nil {
		if callCtx.Err() != nil {
			return nil, f.transportFailure(ctx, callCtx, err)
		}
		return nil, failed("application's answer was cut off: %v", err)
	}

	if int64(len(body)) > f.maxBytes {
		return nil, f.tooLarge()
	}
	return body, nil
}

func (f *Forwarder) tooLarge() *rpc.Error {
	return failed("application's answer is too large: the limit is %s", formatBytes(f.maxBytes))
}

// transportFailure describes an error from sending the request or reading
// the response: the call's timeout, the caller's cancellation, another
// timeout, or an unreachable application.
func (f *Forwarder) transportFailure(ctx, callCtx context.Context, err error) *rpc.Error {
	if context.Cause(callCtx) == errTimedOut {
		return failed("application did not answer within %s", f.timeout)
	}
	if ctx.Err() != nil {
		return failed("application call canceled: %v", context.Cause(ctx))
	}

	// url.Error repeats the method and the URL, which the message states
	// once itself.
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}

	// The client sees what failed, but not the application's address: the
	// log line of the failure names the URL.
	return failed("application unreachable: %s", transportProblem(err))
}

// transportProblem names the kind of a transport error in a few words,
// without the addresses that its text carries.
func transportProblem(err error) string {
	var (
		nerr   net.Error
		dnsErr *net.DNSError
	)
	switch {
	case errors.As(err, &nerr) && nerr.Timeout():
		// A timeout of a client passed in Config, such as its Timeout field.
		return "timed out"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.As(err, &dnsErr):
		return "host name not found"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed before an answer"
	case strings.Contains(err.Error(), "tls:"), strings.Contains(err.Error(), "x509:"):
		return "TLS handshake failed"
	default:
		return "connection failed"
	}
}

// logFailure logs a failure that is not the application's JSON-RPC error,
// at most once per logInterval. The number of failures left out in between
// is logged with the next one.
func (f *Forwarder) logFailure(c Call, rerr *rpc.Error) {
	ok, suppressed := f.throttle.allow(time.Now())
	if !ok {
		return
	}

	kind := "request"
	if c.ID == nil {
		kind = "notification"
	}
	f.log.Warn("application call failed",
		slog.String("method", c.Method),
		slog.String("kind", kind),
		slog.String("client_id", c.ClientID),
		slog.String("url", f.shownURL),
		slog.String("error", rerr.Message),
		slog.Int("suppressed", suppressed),
	)
}

// failed returns a -32005 error with a formatted message.
func failed(format string, args ...any) *rpc.Error {
	return rpc.Errorf(rpc.CodeAppCallFailed, format, args...)
}

// paramsValue converts raw params for the rpc encoders, which omit params
// only when given an untyped nil: a nil json.RawMessage would be written as
// null.
func paramsValue(params json.RawMessage) any {
	if params == nil {
		return nil
	}
	return params
}

// discard reads the start of an ignored body, so that a short body leaves
// the connection reusable, and closes it.
func discard(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, discardLimit))
	_ = body.Close()
}

// statusText returns " " and the status's standard text, or "" for a code
// without one.
func statusText(code int) string {
	if text := http.StatusText(code); text != "" {
		return " " + text
	}
	return ""
}

// formatBytes writes n in MiB or KiB when it is a whole number of them.
func formatBytes(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	default:
		return fmt.Sprintf("%d bytes", n)
	}
}
