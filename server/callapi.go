package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/pgsidecar/sidecar/rpc"
)

// Bounds of calls from the application to clients.
const (
	defaultCallTimeout = 5 * time.Second
	maxCallTimeout     = 60 * time.Second
)

type callRequest struct {
	Subject   *string         `json:"subject"`
	Method    *string         `json:"method"`
	Params    json.RawMessage `json:"params"`
	TimeoutMS *int64          `json:"timeout_ms"`
}

// readCall decodes and checks the body of a call request. It writes the
// error response itself and returns false on failure.
func (s *Server) readCall(c echo.Context, needSubject bool) (callRequest, time.Duration, bool) {
	var req callRequest
	body, err := io.ReadAll(http.MaxBytesReader(c.Response(), c.Request().Body, int64(s.cfg.MaxEventBytes)+64<<10))
	if err != nil {
		_ = apiError(c, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("the request body is over the limit of %d bytes", s.cfg.MaxEventBytes+64<<10))
		return req, 0, false
	}
	if err := json.Unmarshal(body, &req); err != nil {
		_ = apiError(c, http.StatusBadRequest, "invalid_json", `the body must be a JSON object {"method", "params", "timeout_ms"}`)
		return req, 0, false
	}
	if needSubject && (req.Subject == nil || *req.Subject == "") {
		_ = apiError(c, http.StatusBadRequest, "invalid_subject", `"subject" is missing: give the token subject whose connections to call`)
		return req, 0, false
	}
	if req.Method == nil || *req.Method == "" {
		_ = apiError(c, http.StatusBadRequest, "invalid_method", `"method" is missing: give the name of a method the client exposes`)
		return req, 0, false
	}
	if rerr := rpc.CheckParams(req.Params); rerr != nil {
		_ = apiError(c, http.StatusBadRequest, "invalid_params", `"params" must be an object or an array`)
		return req, 0, false
	}

	timeout := defaultCallTimeout
	if req.TimeoutMS != nil {
		timeout = time.Duration(*req.TimeoutMS) * time.Millisecond
		if timeout <= 0 || timeout > maxCallTimeout {
			_ = apiError(c, http.StatusBadRequest, "invalid_timeout", fmt.Sprintf(`"timeout_ms" is %d: give 1 to %d`, *req.TimeoutMS, maxCallTimeout.Milliseconds()))
			return req, 0, false
		}
	}
	return req, timeout, true
}

// callClientHTTP is POST /v1/clients/{client_id}/call.
func (s *Server) callClientHTTP(c echo.Context) error {
	req, timeout, ok := s.readCall(c, false)
	if !ok {
		return nil
	}

	id := c.Param("client_id")
	var result json.RawMessage
	var rerr *rpc.Error
	var err error
	if sess := s.sessions.get(id); sess != nil {
		result, rerr, err = sess.callClient(c.Request().Context(), *req.Method, req.Params, timeout)
	} else if len(id) > instanceIDLen && id[:instanceIDLen] != s.instance {
		result, rerr, err = s.router.callRemote(c.Request().Context(), id[:instanceIDLen], id, *req.Method, req.Params, timeout)
	} else {
		return apiError(c, http.StatusNotFound, "unknown_client", fmt.Sprintf("no client %q is connected", id))
	}

	switch {
	case errors.Is(err, errKeywordArgsOnly):
		return apiError(c, http.StatusBadRequest, "invalid_params", fmt.Sprintf("client %s speaks the fastapi protocol, which takes keyword arguments only: give params as a JSON object", id))
	case errors.Is(err, errClientTimeout):
		return apiError(c, http.StatusGatewayTimeout, "timeout", fmt.Sprintf("client %s did not respond to %s within %s", id, *req.Method, timeout))
	case errors.Is(err, errClientGone):
		return apiError(c, http.StatusNotFound, "unknown_client", fmt.Sprintf("no client %q is connected, or it disconnected before it responded", id))
	case err != nil:
		return apiError(c, http.StatusServiceUnavailable, "canceled", "the call was canceled: "+err.Error())
	case rerr != nil:
		return c.JSON(http.StatusBadGateway, map[string]any{"error": map[string]any{
			"code": "client_error", "message": fmt.Sprintf("client %s returned an error for %s", id, *req.Method), "rpc": rerr,
		}})
	}
	return c.JSON(http.StatusOK, map[string]any{"result": nullIfEmpty(result)})
}

// subjectResult is one connection's response in POST /v1/subjects/call.
type subjectResult struct {
	ClientID string          `json:"client_id"`
	Result   json.RawMessage `json:"result,omitempty"`
	Error    *rpc.Error      `json:"error,omitempty"`
}

// callSubjectHTTP is POST /v1/subjects/call: every connection of one token
// subject, concurrently.
func (s *Server) callSubjectHTTP(c echo.Context) error {
	req, timeout, ok := s.readCall(c, true)
	if !ok {
		return nil
	}

	targets := s.sessions.ofSubject(*req.Subject)
	results := make([]subjectResult, len(targets))
	var wg sync.WaitGroup
	for i, sess := range targets {
		wg.Go(func() {
			results[i] = callOne(c.Request().Context(), sess, *req.Method, req.Params, timeout)
		})
	}
	remote, err := s.router.callSubjectRemote(c.Request().Context(), *req.Subject, *req.Method, req.Params, timeout)
	wg.Wait()
	if err != nil {
		s.log.Warn("calling a subject's connections on other instances failed", "err", err)
	}
	return c.JSON(http.StatusOK, map[string]any{"results": append(results, remote...)})
}

func callOne(ctx context.Context, sess *session, method string, params json.RawMessage, timeout time.Duration) subjectResult {
	result, rerr, err := sess.callClient(ctx, method, params, timeout)
	out := subjectResult{ClientID: sess.id}
	switch {
	case err != nil:
		out.Error = rpc.Errorf(rpc.CodeAppCallFailed, "the client did not respond: %v", err)
	case rerr != nil:
		out.Error = rerr
	default:
		out.Result = nullIfEmpty(result)
	}
	return out
}

func nullIfEmpty(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 {
		return json.RawMessage("null")
	}
	return raw
}
