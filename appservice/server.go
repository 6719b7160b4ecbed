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
	"github.com/tidwall/gjson"
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
			s.metrics.AuthFailures.WithLabelValues("malformed").Inc()
			matrixError(w, http.StatusForbidden, "M_FORBIDDEN", "Authorization must be a Bearer token")
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

// errBadJSON is valid JSON of the wrong shape.
type errBadJSON struct{ msg string }

func (e errBadJSON) Error() string { return e.msg }

// ParseTransaction decodes a transaction body. Syntax errors and shape errors
// are told apart so the homeserver gets M_NOT_JSON or M_BAD_JSON. It reads
// only the routing fields of each event in one pass (gjson): this is the
// ingest hot path, and the content is kept raw for policy to read later.
func ParseTransaction(body []byte) ([]*Event, error) {
	if !gjson.ValidBytes(body) {
		return nil, errors.New("body is not JSON")
	}
	root := gjson.ParseBytes(body)
	if !root.IsObject() {
		return nil, errBadJSON{"transaction must be a JSON object"}
	}
	list := root.Get("events")
	if !list.Exists() || list.Type == gjson.Null {
		return nil, nil
	}
	if !list.IsArray() {
		return nil, errBadJSON{"events must be a list"}
	}
	var events []*Event
	var bad error
	i := 0
	list.ForEach(func(_, v gjson.Result) bool {
		e, err := parseEvent(v, i)
		if err != nil {
			bad = err
			return false
		}
		events = append(events, e)
		i++
		return true
	})
	if bad != nil {
		return nil, bad
	}
	return events, nil
}

func parseEvent(v gjson.Result, i int) (*Event, error) {
	if !v.IsObject() {
		return nil, errBadJSON{fmt.Sprintf("events[%d] is not an object", i)}
	}
	e := &Event{}
	var content gjson.Result
	var err error
	str := func(k, val gjson.Result, dst *string) {
		if val.Type != gjson.String {
			err = errBadJSON{fmt.Sprintf("events[%d].%s must be a string", i, k.String())}
			return
		}
		*dst = val.String()
	}
	v.ForEach(func(k, val gjson.Result) bool {
		switch k.String() {
		case "event_id":
			str(k, val, &e.ID)
		case "room_id":
			str(k, val, &e.RoomID)
		case "type":
			str(k, val, &e.Type)
		case "sender":
			str(k, val, &e.Sender)
		case "state_key":
			if val.Type != gjson.Null {
				var sk string
				str(k, val, &sk)
				e.StateKey = &sk
			}
		case "origin_server_ts":
			// A number, as the spec has it; anything else stores as 0 and
			// still dedupes (every re-send carries the same value).
			if val.Type == gjson.Number {
				e.OriginTS = val.Int()
			}
		case "content":
			content = val
		}
		return err == nil
	})
	if err != nil {
		return nil, err
	}
	switch {
	case e.ID == "":
		return nil, errBadJSON{fmt.Sprintf("events[%d] has no event_id", i)}
	case e.RoomID == "":
		return nil, errBadJSON{fmt.Sprintf("events[%d] has no room_id", i)}
	case e.Type == "":
		return nil, errBadJSON{fmt.Sprintf("events[%d] has no type", i)}
	case e.Sender == "":
		return nil, errBadJSON{fmt.Sprintf("events[%d] has no sender", i)}
	}
	if e.Type == "m.room.member" && content.IsObject() {
		if m := content.Get("membership"); m.Type == gjson.String {
			e.Content.Membership = m.String()
		}
	}
	e.Raw = json.RawMessage(v.Raw)
	return e, nil
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
	events, err := ParseTransaction(body)
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
	n, err := s.inbox.Store(r.Context(), txnID, events)
	if err != nil {
		s.metrics.Transactions.WithLabelValues("error").Inc()
		// Not acknowledged: the homeserver will retry the same transaction.
		s.log.Error().Err(err).Str("txn_id", txnID).Int("events", len(events)).Msg("could not store transaction")
		matrixError(w, http.StatusInternalServerError, "M_UNKNOWN", "could not store transaction")
		return
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
