package identity

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"

	"github.com/rs/zerolog"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
	"github.com/matrix-hipaa/matrix-hipaa/policy/roster"
)

// Roster sources.
const (
	SourceFile  = "file"
	SourceAdmin = "admin"
	SourceFHIR  = "fhir"
)

// RosterEntry is a clinician as stored: their roster fields, where they came
// from, and whether (and by whom) their verification was revoked.
type RosterEntry struct {
	roster.Clinician
	Source       string
	RevokedAt    int64
	RevokedBy    string
	RevokeReason string
}

// Revoked reports whether the entry's verification was withdrawn.
func (e *RosterEntry) Revoked() bool { return e.RevokedAt > 0 }

// Verified reports whether the entry counts at now: not revoked, licence valid.
func (e *RosterEntry) Verified(now time.Time) bool { return !e.Revoked() && e.Valid(now) }

// Member is what a membership decision knows of the entry's person.
func (e *RosterEntry) Member(user string, exempt bool) policy.Member {
	if e == nil {
		return policy.Member{User: user, Exempt: exempt}
	}
	c := e.Clinician
	return policy.Member{User: user, Clinician: &c, Revoked: e.Revoked(), Exempt: exempt}
}

func dateText(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Format("2006-01-02")
}

const rosterColumns = `user_id, npi, role, department, licence_expires, verified_by, verified_at, source, revoked_at, revoked_by, revoke_reason`

func scanEntry(row interface{ Scan(...any) error }) (RosterEntry, error) {
	var e RosterEntry
	var expires string
	var at int64
	if err := row.Scan(&e.UserID, &e.NPI, &e.Role, &e.Department, &expires, &e.VerifiedBy, &at, &e.Source, &e.RevokedAt, &e.RevokedBy, &e.RevokeReason); err != nil {
		return e, err
	}
	if expires != "" {
		e.LicenceExpires, _ = roster.ParseDate(expires)
	}
	if at > 0 {
		e.VerifiedAt = time.UnixMilli(at).UTC()
	}
	return e, nil
}

// LookupClinician returns user's roster entry, or nil if they have none.
func LookupClinician(ctx context.Context, db *store.DB, user string) (*RosterEntry, error) {
	e, err := scanEntry(db.R.QueryRowContext(ctx, `SELECT `+rosterColumns+` FROM clinician WHERE user_id = $1`, user))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &e, nil
}

// ListRoster returns every roster entry, revoked ones included, by user ID.
func ListRoster(ctx context.Context, db *store.DB) ([]RosterEntry, error) {
	rows, err := db.R.QueryContext(ctx, `SELECT `+rosterColumns+` FROM clinician ORDER BY user_id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []RosterEntry
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

func rosterRecord(chain *audit.Chain, by, action, user string, outcome string) *audit.Record {
	r := &audit.Record{Type: audit.TypeRoster, Outcome: outcome, Actor: by, Action: action}
	if user != "" {
		r.Detail = chain.Keys().User(user)
	}
	return r
}

// VerifyTx adds or updates a clinician (and lifts any revocation), audited
// as verify by by. appservice.Invalid fields are refused (see appservice.IsInvalid).
func VerifyTx(ctx context.Context, tx *sql.Tx, chain *audit.Chain, c roster.Clinician, source, by string) error {
	if c.VerifiedBy == "" {
		c.VerifiedBy = by
	}
	for _, check := range []error{roster.CheckUserID(c.UserID), roster.CheckNPI(c.NPI), roster.CheckRole(c.Role)} {
		if check != nil {
			return appservice.Invalid("%v", check)
		}
	}
	now := chain.Now()
	if c.VerifiedAt.IsZero() {
		c.VerifiedAt = now
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO clinician (`+rosterColumns+`, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, '', '', $9)
		ON CONFLICT (user_id) DO UPDATE SET npi = excluded.npi, role = excluded.role, department = excluded.department,
			licence_expires = excluded.licence_expires, verified_by = excluded.verified_by, verified_at = excluded.verified_at,
			source = excluded.source, revoked_at = 0, revoked_by = '', revoke_reason = '', updated_at = excluded.updated_at`,
		c.UserID, c.NPI, c.Role, c.Department, dateText(c.LicenceExpires), c.VerifiedBy, c.VerifiedAt.UnixMilli(), source, now.UnixMilli()); err != nil {
		return err
	}
	return chain.Append(ctx, tx, rosterRecord(chain, by, "verify", c.UserID, audit.OutcomeSuccess))
}

// Verify is VerifyTx in a transaction of its own; a refusal (bad NPI,
// unknown role, not a user ID) is audited as denied, with who tried.
func Verify(ctx context.Context, db *store.DB, chain *audit.Chain, c roster.Clinician, source, by string) error {
	err := db.Tx(ctx, store.Durable, func(tx *sql.Tx) error { return VerifyTx(ctx, tx, chain, c, source, by) })
	return appservice.RecordRefusal(ctx, db, chain, rosterRecord(chain, by, "verify", validUserOrEmpty(c.UserID), ""), err)
}

// Revoke is RevokeTx in a transaction of its own; a refusal (no reason, not
// a verified clinician) is audited as denied, with who tried.
func Revoke(ctx context.Context, db *store.DB, chain *audit.Chain, user, reason, by string) error {
	err := db.Tx(ctx, store.Durable, func(tx *sql.Tx) error { return RevokeTx(ctx, tx, chain, user, reason, by) })
	return appservice.RecordRefusal(ctx, db, chain, rosterRecord(chain, by, "revoke", validUserOrEmpty(user), ""), err)
}

// validUserOrEmpty: a refused request's user is named (as a pseudonym) only
// if it is a user ID.
func validUserOrEmpty(u string) string {
	if roster.CheckUserID(u) != nil {
		return ""
	}
	return u
}

// RevokeTx withdraws a clinician's verification, audited as revoke by by.
// The reason stays in the roster table.
func RevokeTx(ctx context.Context, tx *sql.Tx, chain *audit.Chain, user, reason, by string) error {
	if reason == "" {
		return appservice.Invalid("revoking a verification needs a reason")
	}
	res, err := tx.ExecContext(ctx, `UPDATE clinician SET revoked_at = $1, revoked_by = $2, revoke_reason = $3, updated_at = $1 WHERE user_id = $4 AND revoked_at = 0`,
		chain.Now().UnixMilli(), by, reason, user)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return appservice.Invalid("%s is not a verified clinician", user)
	}
	return chain.Append(ctx, tx, rosterRecord(chain, by, "revoke", user, audit.OutcomeSuccess))
}

// ApplyRoster makes the roster match a list from source (the roster file or
// a FHIR import): new and changed entries are verified; with prune, entries
// from that source missing from the list are revoked. An admin's revocation
// stands (only an admin's verify lifts it). It returns how many entries
// changed.
func ApplyRoster(ctx context.Context, db *store.DB, chain *audit.Chain, list []roster.Clinician, source, by string, prune bool) (int, error) {
	changed := 0
	err := db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		changed = 0
		current := map[string]RosterEntry{}
		rows, err := tx.QueryContext(ctx, `SELECT `+rosterColumns+` FROM clinician`)
		if err != nil {
			return err
		}
		for rows.Next() {
			e, err := scanEntry(rows)
			if err != nil {
				rows.Close()
				return err
			}
			current[e.UserID] = e
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		listed := map[string]bool{}
		for _, c := range list {
			listed[c.UserID] = true
			cur, ok := current[c.UserID]
			if ok && cur.Revoked() && cur.RevokedBy != by {
				continue // revoked by an admin: stands
			}
			same := ok && !cur.Revoked() && cur.NPI == c.NPI && cur.Role == c.Role && cur.Department == c.Department &&
				cur.LicenceExpires.Equal(c.LicenceExpires) && cur.Source == source
			if same {
				continue
			}
			if err := VerifyTx(ctx, tx, chain, c, source, by); err != nil {
				return err
			}
			changed++
		}
		if prune {
			for u, cur := range current {
				if cur.Source == source && !cur.Revoked() && !listed[u] {
					if err := RevokeTx(ctx, tx, chain, u, "no longer on the roster ("+source+")", by); err != nil {
						return err
					}
					changed++
				}
			}
		}
		rec := rosterRecord(chain, by, "load", "", audit.OutcomeSuccess)
		rec.Count = int64(len(list))
		return chain.Append(ctx, tx, rec)
	})
	return changed, err
}

// RosterRefused is a roster file with errors (already logged and audited).
type RosterRefused struct{ Err error }

func (r RosterRefused) Error() string { return r.Err.Error() }
func (r RosterRefused) Unwrap() error { return r.Err }

// RosterFile keeps the clinician table in step with the roster file: read
// at start and whenever it changes; a file with errors is refused (each
// error logged as file:line, the refusal audited) and the roster stays as
// it was.
type RosterFile struct {
	Path    string
	DB      *store.DB
	Chain   *audit.Chain
	Log     zerolog.Logger
	Changed func() // after the roster changed
	last    time.Time
	size    int64
}

// Load reads the file once (if it changed since the last look).
func (f *RosterFile) Load(ctx context.Context) error {
	st, err := os.Stat(f.Path)
	if err != nil {
		return err
	}
	if st.ModTime().Equal(f.last) && st.Size() == f.size {
		return nil
	}
	f.last, f.size = st.ModTime(), st.Size()
	data, err := os.ReadFile(f.Path)
	if err != nil {
		return err
	}
	list, perr := roster.Parse(f.Path, data)
	if perr != nil {
		f.Log.Error().Str("roster", f.Path).Msg("roster file refused; the roster stays as it was:\n" + perr.Error())
		if err := f.Chain.AppendTx(ctx, f.DB, rosterRecord(f.Chain, "roster-file", "load-failed", "", audit.OutcomeFailure)); err != nil {
			return err
		}
		return RosterRefused{perr}
	}
	n, err := ApplyRoster(ctx, f.DB, f.Chain, list, SourceFile, "roster-file", true)
	if err != nil {
		return err
	}
	f.Log.Info().Int("clinicians", len(list)).Int("changed", n).Msg("roster file loaded")
	if n > 0 && f.Changed != nil {
		f.Changed()
	}
	return nil
}

// Watch reloads the file whenever it changes, until ctx ends.
func (f *RosterFile) Watch(ctx context.Context, every time.Duration) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		if err := f.Load(ctx); err != nil && ctx.Err() == nil && !errors.As(err, new(RosterRefused)) {
			f.Log.Warn().Err(err).Msg("roster file could not be read")
		}
	}
}

// describeClinician is how the bot names a verified person to a room.
func describeClinician(e *RosterEntry) string {
	s := "verified " + e.Role
	if e.Department != "" {
		s += fmt.Sprintf(" (%s)", e.Department)
	}
	return s
}
