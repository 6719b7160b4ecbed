package appservice

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// Server is our own implementation of the homeserver → application service
// API. mautrix's handler acknowledges before processing and dedupes only in
// memory; here a 200 means the events are on disk with their audit records.
type Server struct {
	inbox   *Inbox
	hsToken []byte
	maxBody int64
	metrics *Metrics
	log     zerolog.Logger
	// Gaps, if set, refuses once a transaction that skips a number (see
	// TxnGaps), and Recover is then called to ask the homeserver to retry
	// at once (a ping).
	Gaps    *TxnGaps
	Recover func()
	// mounts are features' own endpoints, by exact path (see Router).
	mounts map[string]http.Handler
}

// Mount serves h at path, which must be under /_hipaa/ and not taken.
func (s *Server) Mount(path string, h http.Handler) error {
	if !strings.HasPrefix(path, "/_hipaa/") {
		return fmt.Errorf("endpoint %s is not under /_hipaa/", path)
	}
	if s.mounts == nil {
		s.mounts = map[string]http.Handler{}
	}
	if s.mounts[path] != nil {
		return fmt.Errorf("endpoint %s is served twice", path)
	}
	s.mounts[path] = h
	return nil
}

func NewServer(inbox *Inbox, hsToken string, maxBody int64, m *Metrics, log zerolog.Logger) *Server {
	return &Server{inbox: inbox, hsToken: []byte(hsToken), maxBody: maxBody, metrics: m, log: log}
}

// matrixError writes a Matrix-style error body.
func matrixError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"errcode": code, "error": msg})
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// ServeHTTP routes the versioned and legacy paths. Unknown paths get 404
// M_UNRECOGNIZED and known paths with the wrong method 405, as the spec says.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		// A bug must cost one request, never the process or its other requests.
		if rec := recover(); rec != nil {
			s.log.Error().Str("path_kind", routeKind(r.URL.Path)).Msg(fmt.Sprintf("panic handling request: %T", rec))
			matrixError(w, http.StatusInternalServerError, "M_UNKNOWN", "internal error")
		}
	}()
	path := r.URL.EscapedPath()
	if h := s.mounts[path]; h != nil {
		h.ServeHTTP(w, r)
		return
	}
	var rest string
	var ok bool
	if rest, ok = strings.CutPrefix(path, "/_matrix/app/v1/"); !ok {
		rest = strings.TrimPrefix(path, "/") // legacy unprefixed routes
	}
	route, arg, _ := strings.Cut(rest, "/")
	switch {
	case route == "transactions" && arg != "" && !strings.Contains(arg, "/"):
		s.route(w, r, http.MethodPut, func() {
			txnID, err := url.PathUnescape(arg)
			if err != nil {
				matrixError(w, http.StatusBadRequest, "M_INVALID_PARAM", "bad transaction ID")
				return
			}
			s.putTransaction(w, r, txnID)
		})
	case route == "users" && arg != "" && !strings.Contains(arg, "/"):
		s.route(w, r, http.MethodGet, func() {
			matrixError(w, http.StatusNotFound, "M_NOT_FOUND", "this service does not create users on demand")
		})
	case route == "rooms" && arg != "" && !strings.Contains(arg, "/"):
		s.route(w, r, http.MethodGet, func() {
			matrixError(w, http.StatusNotFound, "M_NOT_FOUND", "this service does not create rooms on demand")
		})
	case rest == "ping" && path == "/_matrix/app/v1/ping":
		s.route(w, r, http.MethodPost, func() { s.ping(w, r) })
	default:
		matrixError(w, http.StatusNotFound, "M_UNRECOGNIZED", "unrecognized request")
	}
}

func (s *Server) route(w http.ResponseWriter, r *http.Request, method string, h func()) {
	if r.Method != method {
		w.Header().Set("Allow", method)
		matrixError(w, http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "method not allowed")
		return
	}
	if !s.authorize(w, r) {
		return
	}
	h()
}

// authorize checks the hs_token from the Authorization header, or from the
// legacy access_token query parameter; if both are given they must agree.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) bool {
	header := r.Header.Get("Authorization")
	query := r.URL.Query().Get("access_token")
	var token string
	switch {
	case header != "":
		t, ok := strings.CutPrefix(header, "Bearer ")
		if !ok {
			// Another scheme carries no hs_token: unauthenticated, not a
			// wrong token.
			s.metrics.AuthFailures.WithLabelValues("malformed").Inc()
			matrixError(w, http.StatusUnauthorized, "M_UNAUTHORIZED", "Authorization must be a Bearer token")
			return false
		}
		token = t
		if query != "" && query != token {
			s.metrics.AuthFailures.WithLabelValues("malformed").Inc()
			matrixError(w, http.StatusForbidden, "M_FORBIDDEN", "Authorization header and access_token disagree")
			return false
		}
	case query != "":
		token = query
	default:
		s.metrics.AuthFailures.WithLabelValues("missing").Inc()
		matrixError(w, http.StatusUnauthorized, "M_UNAUTHORIZED", "missing hs_token")
		return false
	}
	if subtle.ConstantTimeCompare([]byte(token), s.hsToken) != 1 {
		s.metrics.AuthFailures.WithLabelValues("wrong").Inc()
		s.log.Warn().Str("path_kind", routeKind(r.URL.Path)).Msg("rejected request with a wrong hs_token")
		matrixError(w, http.StatusForbidden, "M_FORBIDDEN", "bad hs_token")
		return false
	}
	return true
}

func routeKind(path string) string {
	for _, k := range []string{"transactions", "users", "rooms", "ping"} {
		if strings.Contains(path, "/"+k) {
			return k
		}
	}
	return "other"
}

func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if r.ContentLength > s.maxBody {
		matrixError(w, http.StatusRequestEntityTooLarge, "M_TOO_LARGE", fmt.Sprintf("body larger than %d bytes", s.maxBody))
		return nil, false
	}
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength))
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, s.maxBody))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		matrixError(w, http.StatusRequestEntityTooLarge, "M_TOO_LARGE", fmt.Sprintf("body larger than %d bytes", s.maxBody))
		return nil, false
	}
	if err != nil {
		matrixError(w, http.StatusBadRequest, "M_BAD_JSON", "could not read body")
		return nil, false
	}
	return buf.Bytes(), true
}

func (s *Server) putTransaction(w http.ResponseWriter, r *http.Request, txnID string) {
	start := time.Now()
	body, ok := s.readBody(w, r)
	if !ok {
		s.metrics.Transactions.WithLabelValues("rejected").Inc()
		return
	}
	txn, err := ParseTransaction(body)
	if err != nil {
		s.metrics.Transactions.WithLabelValues("rejected").Inc()
		var bad errBadJSON
		if errors.As(err, &bad) {
			matrixError(w, http.StatusBadRequest, "M_BAD_JSON", bad.msg)
		} else {
			matrixError(w, http.StatusBadRequest, "M_NOT_JSON", "body is not valid JSON")
		}
		s.log.Warn().Str("txn_id", txnID).Msg("rejected malformed transaction")
		return
	}
	if len(txn.Rejected) > 0 {
		s.log.Warn().Str("txn_id", txnID).Int("refused", len(txn.Rejected)).Str("reason", txn.Rejected[0].Reason).
			Msg("refused malformed events; storing the rest")
	}
	events := txn.Events
	if s.Gaps != nil {
		if missing, refuse := s.Gaps.Refuse(txnID); refuse {
			s.metrics.Transactions.WithLabelValues("gap").Inc()
			s.log.Warn().Str("txn_id", txnID).Int64("missing", missing).Msg("a transaction was skipped; refusing this one once so the homeserver sends the skipped one first")
			matrixError(w, http.StatusServiceUnavailable, "M_UNKNOWN", "an earlier transaction has not arrived; send it first")
			if s.Recover != nil {
				s.Recover()
			}
			return
		}
	}
	n, err := s.inbox.StoreTransaction(r.Context(), txnID, txn)
	if err != nil {
		s.metrics.Transactions.WithLabelValues("error").Inc()
		// Not acknowledged: the homeserver will retry the same transaction.
		s.log.Error().Err(err).Str("txn_id", txnID).Int("events", len(events)).Msg("could not store transaction")
		matrixError(w, http.StatusInternalServerError, "M_UNKNOWN", "could not store transaction")
		return
	}
	if s.Gaps != nil {
		s.Gaps.Stored(txnID)
	}
	result := "ok"
	if n == 0 && len(events) > 0 {
		result = "duplicate"
	}
	s.metrics.Transactions.WithLabelValues(result).Inc()
	s.metrics.TxnDuration.Observe(time.Since(start).Seconds())
	writeJSON(w, http.StatusOK, "{}")
	s.log.Debug().Str("txn_id", txnID).Int("events", len(events)).Int("new", n).Msg("stored transaction")
}

func (s *Server) ping(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req struct {
		TransactionID string `json:"transaction_id"`
	}
	if len(bytes.TrimSpace(body)) > 0 {
		if !json.Valid(body) {
			matrixError(w, http.StatusBadRequest, "M_NOT_JSON", "body is not valid JSON")
			return
		}
		if err := json.Unmarshal(body, &req); err != nil {
			matrixError(w, http.StatusBadRequest, "M_BAD_JSON", "ping body must be an object")
			return
		}
	}
	s.log.Debug().Str("ping_txn", req.TransactionID).Msg("ping from homeserver")
	writeJSON(w, http.StatusOK, "{}")
}
