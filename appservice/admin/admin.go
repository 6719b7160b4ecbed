// Package admin is the admin HTTP API: the operations an administrator runs
// from the command line, for the hospital's own tools. Every call needs the
// bearer token and names who asked (the "by" field, or the X-Hipaa-Actor
// header), which goes into the audit trail as admin-api:<who>.
//
//	GET  /_hipaa/admin/v1/holds                 standing legal holds
//	POST /_hipaa/admin/v1/holds                 {"room_id"|"user_id", "reason", "by"}
//	POST /_hipaa/admin/v1/holds/{id}/release    {"by"}
//	GET  /_hipaa/admin/v1/rooms                 the rooms listing
//	POST /_hipaa/admin/v1/wipes                 {"user_id", "reason", "by", "device_id", "offboard", "deactivate", "redact", "since_ms"}
//	GET  /_hipaa/admin/v1/wipes/{id}            a wipe's progress
//	GET  /_hipaa/admin/v1/roster                the verified clinicians
//	POST /_hipaa/admin/v1/roster                {"user_id", "npi", "role", "department", "licence_expires", "by"}: verify
//	POST /_hipaa/admin/v1/roster/revoke         {"user_id", "reason", "by"}
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/enforce"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/expiry"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/identity"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/sessions"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
	"github.com/matrix-hipaa/matrix-hipaa/policy/roster"
)

// Server serves the admin API.
type Server struct {
	DB     *store.DB
	Chain  *audit.Chain
	Policy func() *policy.Policy
	// Token is the shared token (may be empty); People maps each
	// person's token's SHA-256 (hex) to their name. A person's requests are
	// recorded as theirs, whatever the request says.
	Token  string
	People map[string]string
	// Guard protects the bot, administrators and other servers' users
	// from wipes that are not forced.
	Guard sessions.WipeGuard
	// Refused, if set, is told of each request refused for its
	// credentials (missing or wrong), to log and count it.
	Refused func(reason string)
}

const maxBody = 64 << 10

type apiError struct {
	Code  string `json:"errcode"`
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, apiError{code, msg})
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if rec := recover(); rec != nil {
			fail(w, http.StatusInternalServerError, "M_UNKNOWN", "internal error")
		}
	}()
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		s.refused("missing")
		fail(w, http.StatusUnauthorized, "M_MISSING_TOKEN", "an admin token is required")
		return
	}
	person, known := s.person(token)
	if !known {
		s.refused("wrong")
		fail(w, http.StatusForbidden, "M_FORBIDDEN", "wrong admin token")
		return
	}
	if person != "" {
		r = r.WithContext(context.WithValue(r.Context(), personKey{}, person))
	}
	path := strings.TrimPrefix(r.URL.Path, "/_hipaa/admin/v1")
	switch {
	case path == "/holds" && r.Method == http.MethodGet:
		s.listHolds(w, r)
	case path == "/holds" && r.Method == http.MethodPost:
		s.placeHold(w, r)
	case strings.HasPrefix(path, "/holds/") && strings.HasSuffix(path, "/release") && r.Method == http.MethodPost:
		s.releaseHold(w, r, strings.TrimSuffix(strings.TrimPrefix(path, "/holds/"), "/release"))
	case path == "/rooms" && r.Method == http.MethodGet:
		s.rooms(w, r)
	case path == "/wipes" && r.Method == http.MethodPost:
		s.requestWipe(w, r)
	case strings.HasPrefix(path, "/wipes/") && r.Method == http.MethodGet:
		s.wipeStatus(w, r, strings.TrimPrefix(path, "/wipes/"))
	case path == "/roster" && r.Method == http.MethodGet:
		s.listRoster(w, r)
	case path == "/roster" && r.Method == http.MethodPost:
		s.verify(w, r)
	case path == "/roster/revoke" && r.Method == http.MethodPost:
		s.revoke(w, r)
	case path == "/holds" || path == "/rooms" || path == "/wipes" || path == "/roster" || path == "/roster/revoke" ||
		strings.HasPrefix(path, "/holds/") || strings.HasPrefix(path, "/wipes/"):
		fail(w, http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "method not allowed")
	default:
		fail(w, http.StatusNotFound, "M_UNRECOGNIZED", "no such admin endpoint")
	}
}

func (s *Server) refused(reason string) {
	if s.Refused != nil {
		s.Refused(reason)
	}
}

type personKey struct{}

// person finds whose token this is: a person's name, or "" for the shared
// token. Every hash is compared in constant time.
func (s *Server) person(token string) (string, bool) {
	sum := sha256.Sum256([]byte(token))
	hash := []byte(hex.EncodeToString(sum[:]))
	name, found := "", false
	for h, n := range s.People {
		if subtle.ConstantTimeCompare(hash, []byte(h)) == 1 {
			name, found = n, true
		}
	}
	if !found && s.Token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(s.Token)) == 1 {
		found = true
	}
	return name, found
}

// actor is who asked: the owner of a person's token; with the shared token,
// the body's "by", else the X-Hipaa-Actor header.
func actor(r *http.Request, by string) (string, error) {
	if p, ok := r.Context().Value(personKey{}).(string); ok && p != "" {
		return "admin-api:" + p, nil
	}
	if by == "" {
		by = r.Header.Get("X-Hipaa-Actor")
	}
	by = strings.TrimSpace(by)
	if by == "" || len(by) > 100 || strings.ContainsAny(by, "\r\n") {
		return "", errors.New(`say who is asking: "by" in the body or the X-Hipaa-Actor header (up to 100 characters)`)
	}
	return "admin-api:" + by, nil
}

// decode reads a small JSON body into v, refusing unknown fields.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		fail(w, http.StatusBadRequest, "M_BAD_JSON", "could not read the body")
		return false
	}
	if len(body) > maxBody {
		fail(w, http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "body too large")
		return false
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		fail(w, http.StatusBadRequest, "M_BAD_JSON", "body: "+err.Error())
		return false
	}
	return true
}

// decodeAs reads the body into v and says who asked (its *by field, or
// the header), answering the error itself when either is wrong.
func decodeAs(w http.ResponseWriter, r *http.Request, v any, by *string) (string, bool) {
	if !decode(w, r, v) {
		return "", false
	}
	who, err := actor(r, *by)
	if err != nil {
		fail(w, http.StatusBadRequest, "M_MISSING_PARAM", err.Error())
		return "", false
	}
	return who, true
}

type holdJSON struct {
	ID       int64  `json:"id"`
	RoomID   string `json:"room_id,omitempty"`
	UserID   string `json:"user_id,omitempty"`
	Reason   string `json:"reason"`
	PlacedBy string `json:"placed_by"`
	PlacedAt int64  `json:"placed_at"`
}

// read runs a read-only admin operation for whoever asked and records the
// read (action, and how many items it returned) before anything is answered.
func read[T any](s *Server, w http.ResponseWriter, r *http.Request, action string, get func() ([]T, error)) ([]T, bool) {
	who, err := actor(r, "")
	if err != nil {
		fail(w, http.StatusBadRequest, "M_MISSING_PARAM", err.Error())
		return nil, false
	}
	items, err := get()
	if err != nil {
		fail(w, http.StatusInternalServerError, "M_UNKNOWN", "could not read "+action)
		return nil, false
	}
	if err := appservice.RecordCommand(r.Context(), s.DB, s.Chain, &audit.Record{Actor: who, Action: action, Count: int64(len(items))}, nil); err != nil {
		fail(w, http.StatusInternalServerError, "M_UNKNOWN", "could not record this read in the audit trail")
		return nil, false
	}
	return items, true
}

func (s *Server) listHolds(w http.ResponseWriter, r *http.Request) {
	// The list shows reasons: reading it is on the record.
	holds, ok := read(s, w, r, "hold-list", func() ([]expiry.Hold, error) { return expiry.StandingHolds(r.Context(), s.DB) })
	if !ok {
		return
	}
	out := make([]holdJSON, 0, len(holds))
	for _, h := range holds {
		out = append(out, holdJSON{h.ID, h.Room, h.User, h.Reason, h.PlacedBy, h.PlacedAt})
	}
	writeJSON(w, http.StatusOK, map[string]any{"holds": out})
}

func (s *Server) placeHold(w http.ResponseWriter, r *http.Request) {
	var req struct {
		RoomID string `json:"room_id"`
		UserID string `json:"user_id"`
		Reason string `json:"reason"`
		By     string `json:"by"`
	}
	who, ok := decodeAs(w, r, &req, &req.By)
	if !ok {
		return
	}
	switch {
	case (req.RoomID == "") == (req.UserID == ""):
		fail(w, http.StatusBadRequest, "M_INVALID_PARAM", "give exactly one of room_id and user_id")
		return
	case req.RoomID != "" && !strings.HasPrefix(req.RoomID, "!"):
		fail(w, http.StatusBadRequest, "M_INVALID_PARAM", "room_id must be a room ID (!opaque:server)")
		return
	case req.UserID != "" && !strings.HasPrefix(req.UserID, "@"):
		fail(w, http.StatusBadRequest, "M_INVALID_PARAM", "user_id must be a user ID (@name:server)")
		return
	case strings.TrimSpace(req.Reason) == "":
		fail(w, http.StatusBadRequest, "M_MISSING_PARAM", "a hold needs a reason")
		return
	}
	id, err := expiry.PlaceHold(r.Context(), s.DB, s.Chain, req.RoomID, req.UserID, req.Reason, who)
	if err != nil {
		fail(w, http.StatusInternalServerError, "M_UNKNOWN", "could not place the hold")
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"id": id})
}

// pathID reads the numeric ID in a path, answering 404 if it is not one.
func pathID(w http.ResponseWriter, text, what string) (int64, bool) {
	id, err := strconv.ParseInt(text, 10, 64)
	if err != nil || id <= 0 {
		fail(w, http.StatusNotFound, "M_NOT_FOUND", "no such "+what)
		return 0, false
	}
	return id, true
}

func (s *Server) releaseHold(w http.ResponseWriter, r *http.Request, idText string) {
	id, ok := pathID(w, idText, "hold")
	if !ok {
		return
	}
	var req struct {
		By string `json:"by"`
	}
	who, ok := decodeAs(w, r, &req, &req.By)
	if !ok {
		return
	}
	if err := expiry.ReleaseHold(r.Context(), s.DB, s.Chain, id, who); appservice.IsInvalid(err) {
		fail(w, http.StatusNotFound, "M_NOT_FOUND", fmt.Sprintf("no standing hold %d", id))
		return
	} else if err != nil {
		fail(w, http.StatusInternalServerError, "M_UNKNOWN", "could not release the hold")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"released": id})
}

type roomJSON struct {
	RoomID             string   `json:"room_id"`
	Encrypted          bool     `json:"encrypted"`
	EncryptionRequired bool     `json:"encryption_required"`
	JoinRule           string   `json:"join_rule,omitempty"`
	GuestAccess        string   `json:"guest_access,omitempty"`
	BotPower           *int     `json:"bot_power,omitempty"`
	PowerNeeded        *int     `json:"power_needed,omitempty"`
	Problems           []string `json:"problems,omitempty"`
}

func (s *Server) rooms(w http.ResponseWriter, r *http.Request) {
	rooms, ok := read(s, w, r, "rooms", func() ([]enforce.RoomReport, error) { return enforce.ListRooms(r.Context(), s.DB, s.Policy()) })
	if !ok {
		return
	}
	out := make([]roomJSON, 0, len(rooms))
	for i := range rooms {
		rm := &rooms[i]
		j := roomJSON{RoomID: rm.ID, Encrypted: rm.Encrypted, EncryptionRequired: rm.EncryptionRequired, JoinRule: rm.JoinRule, GuestAccess: rm.GuestAccess}
		if rm.BotJoined {
			j.BotPower, j.PowerNeeded = &rm.BotPower, &rm.Needed
		}
		for _, p := range rm.Problems {
			j.Problems = append(j.Problems, p.Action+": "+p.Detail)
		}
		out = append(out, j)
	}
	writeJSON(w, http.StatusOK, map[string]any{"rooms": out})
}

func (s *Server) requestWipe(w http.ResponseWriter, r *http.Request) {
	var req struct {
		UserID     string `json:"user_id"`
		Reason     string `json:"reason"`
		By         string `json:"by"`
		Offboard   bool   `json:"offboard"`
		Deactivate bool   `json:"deactivate"`
		Device     string `json:"device_id"`
		Redact     string `json:"redact"`
		SinceMS    int64  `json:"since_ms"`
		// ForceReason forces a wipe of a protected user (the bot, an
		// administrator, another server's user), for this reason.
		ForceReason string `json:"force_reason"`
	}
	who, ok := decodeAs(w, r, &req, &req.By)
	if !ok {
		return
	}
	if req.Redact == "" {
		req.Redact = "phi"
	}
	id, err := sessions.RequestWipe(r.Context(), s.DB, s.Chain, sessions.Wipe{User: req.UserID, Reason: req.Reason, RequestedBy: who,
		Offboard: req.Offboard, Deactivate: req.Deactivate, Device: req.Device, Scope: req.Redact, Since: req.SinceMS,
		Force: req.ForceReason != "", ForceReason: req.ForceReason, Guard: s.Guard})
	if appservice.IsInvalid(err) {
		fail(w, http.StatusBadRequest, "M_INVALID_PARAM", err.Error())
		return
	} else if err != nil {
		fail(w, http.StatusInternalServerError, "M_UNKNOWN", "could not record the wipe")
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"id": id, "state": "requested"})
}

func (s *Server) wipeStatus(w http.ResponseWriter, r *http.Request, idText string) {
	id, ok := pathID(w, idText, "wipe")
	if !ok {
		return
	}
	// Reading a wipe's progress is on the record too (it names the user).
	found, ok := read(s, w, r, "wipe-status", func() ([]sessions.Wipe, error) {
		wp, err := sessions.LoadWipe(r.Context(), s.DB, id)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, nil
		}
		return []sessions.Wipe{wp}, err
	})
	if !ok {
		return
	}
	if len(found) == 0 {
		fail(w, http.StatusNotFound, "M_NOT_FOUND", "no such wipe")
		return
	}
	wp := found[0]
	writeJSON(w, http.StatusOK, map[string]any{"id": wp.ID, "user_id": wp.User, "state": wp.State, "sessions_revoked": wp.Revoked,
		"confirmed_at": wp.ConfirmedAt, "messages_redacted": wp.Redacted, "messages_held": wp.Held, "rooms_left": wp.Left, "error": wp.LastError})
}

type clinicianJSON struct {
	UserID         string `json:"user_id"`
	NPI            string `json:"npi"`
	Role           string `json:"role"`
	Department     string `json:"department,omitempty"`
	LicenceExpires string `json:"licence_expires,omitempty"`
	VerifiedBy     string `json:"verified_by"`
	VerifiedAt     string `json:"verified_at"`
	Source         string `json:"source"`
	Verified       bool   `json:"verified"` // not revoked, licence not expired
	Revoked        bool   `json:"revoked"`
}

func (s *Server) listRoster(w http.ResponseWriter, r *http.Request) {
	list, ok := read(s, w, r, "roster-list", func() ([]identity.RosterEntry, error) { return identity.ListRoster(r.Context(), s.DB) })
	if !ok {
		return
	}
	now := s.Chain.Now()
	out := make([]clinicianJSON, 0, len(list))
	for _, e := range list {
		j := clinicianJSON{UserID: e.UserID, NPI: e.NPI, Role: e.Role, Department: e.Department, VerifiedBy: e.VerifiedBy,
			VerifiedAt: e.VerifiedAt.Format(time.RFC3339), Source: e.Source, Revoked: e.Revoked(), Verified: e.Verified(now)}
		if !e.LicenceExpires.IsZero() {
			j.LicenceExpires = e.LicenceExpires.Format("2006-01-02")
		}
		out = append(out, j)
	}
	writeJSON(w, http.StatusOK, map[string]any{"clinicians": out})
}

func (s *Server) verify(w http.ResponseWriter, r *http.Request) {
	var req struct {
		UserID         string `json:"user_id"`
		NPI            string `json:"npi"`
		Role           string `json:"role"`
		Department     string `json:"department"`
		LicenceExpires string `json:"licence_expires"`
		By             string `json:"by"`
	}
	who, ok := decodeAs(w, r, &req, &req.By)
	if !ok {
		return
	}
	c := roster.Clinician{UserID: req.UserID, NPI: req.NPI, Role: req.Role, Department: req.Department, VerifiedBy: who}
	if req.LicenceExpires != "" {
		t, err := roster.ParseDate(req.LicenceExpires)
		if err != nil {
			fail(w, http.StatusBadRequest, "M_INVALID_PARAM", "licence_expires: "+err.Error())
			return
		}
		c.LicenceExpires = t
	}
	s.reply(w, identity.Verify(r.Context(), s.DB, s.Chain, c, identity.SourceAdmin, who), map[string]any{"verified": req.UserID})
}

func (s *Server) revoke(w http.ResponseWriter, r *http.Request) {
	var req struct {
		UserID string `json:"user_id"`
		Reason string `json:"reason"`
		By     string `json:"by"`
	}
	who, ok := decodeAs(w, r, &req, &req.By)
	if !ok {
		return
	}
	s.reply(w, identity.Revoke(r.Context(), s.DB, s.Chain, req.UserID, req.Reason, who), map[string]any{"revoked": req.UserID})
}

// reply answers an audited change: 400 with the reason for a refused
// request, 500 for a failure, else ok.
func (s *Server) reply(w http.ResponseWriter, err error, ok map[string]any) {
	switch {
	case appservice.IsInvalid(err):
		fail(w, http.StatusBadRequest, "M_INVALID_PARAM", err.Error())
	case err != nil:
		fail(w, http.StatusInternalServerError, "M_UNKNOWN", "could not make the change")
	default:
		writeJSON(w, http.StatusOK, ok)
	}
}
