package sessions

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// JobWipe runs a remote wipe's steps.
const JobWipe = "wipe"

// Wipe is a remote wipe request and how far it got.
type Wipe struct {
	ID                      int64
	User, Device            string
	Offboard                bool
	Deactivate              bool   // with Offboard, on Synapse: deactivate the account too
	Scope                   string // none, phi (rooms policy requires encrypted) or all
	Since                   int64  // unix ms; 0 for all time
	Reason, RequestedBy     string
	State                   string
	Revoked, Redacted, Left int
	// Held is how many messages in scope a legal hold kept from redaction.
	Held        int
	ConfirmedAt int64
	LastError   string
	// Force, with ForceReason, wipes a user Guard protects.
	Force       bool
	ForceReason string
	// Guard protects the bot, administrators and other servers' users from
	// a wipe that is not forced. Every caller that takes a wipe request
	// from a person sets it (the CLI, the admin API, the management room).
	Guard WipeGuard
}

// WipeGuard names whom a wipe may not touch unless forced: the service's
// own bot (its sessions are the service's), the administrators (a stolen
// admin credential must not lock out the others), and users of other
// servers (the service cannot act as them; a wipe would only fail).
type WipeGuard struct {
	Bot, Domain string
	Admin       func(user string) bool
}

func (g WipeGuard) check(w Wipe) error {
	if g.Bot == "" {
		return nil
	}
	var who string
	switch {
	case w.User == g.Bot:
		who = "the service's own bot"
	case g.Admin != nil && g.Admin(w.User):
		who = "an administrator"
	case appservice.ServerOf(w.User) != g.Domain:
		who = "a user of another server"
	default:
		return nil
	}
	if !w.Force {
		return appservice.Invalid("%s is %s: a wipe of them needs force, with its own reason", w.User, who)
	}
	if strings.TrimSpace(w.ForceReason) == "" {
		return appservice.Invalid("forcing a wipe of %s needs its own reason", who)
	}
	return nil
}

// RequestWipe records a wipe and queues its job; the running service does
// the steps. Requesting is audited with who asked (the reason stays in the
// wipe table).
func RequestWipe(ctx context.Context, db *store.DB, chain *audit.Chain, w Wipe) (id int64, err error) {
	err = db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		id, err = RequestWipeTx(ctx, tx, chain, w)
		return err
	})
	if err != nil {
		rec := wipeRecord(chain, w, "requested", audit.OutcomeDenied, 0)
		if !strings.HasPrefix(w.User, "@") {
			rec.Detail = "" // not a user ID: nothing to name
		}
		return 0, appservice.RecordRefusal(ctx, db, chain, rec, err)
	}
	return id, nil
}

// RequestWipeTx is RequestWipe inside the caller's transaction.
func RequestWipeTx(ctx context.Context, tx *sql.Tx, chain *audit.Chain, w Wipe) (int64, error) {
	switch {
	case w.User == "" || w.User[0] != '@':
		return 0, appservice.Invalid("a wipe is for a user ID (@name:server)")
	case w.Reason == "":
		return 0, appservice.Invalid("a wipe needs a reason")
	case w.Scope != "none" && w.Scope != "phi" && w.Scope != "all":
		return 0, appservice.Invalid("redaction scope must be none, phi or all, not %q", w.Scope)
	case w.Deactivate && !w.Offboard:
		return 0, appservice.Invalid("deactivating an account is part of offboarding: add -offboard")
	case w.Deactivate && w.Device != "":
		return 0, appservice.Invalid("a single-device wipe cannot deactivate the account")
	}
	if err := w.Guard.check(w); err != nil {
		return 0, err
	}
	if w.Force {
		// Kept with the wipe, like its reason; the audit trail says it was forced.
		w.Reason += " [forced: " + w.ForceReason + "]"
	}
	now := chain.Now()
	if err := tx.QueryRowContext(ctx, `INSERT INTO wipe (user_id, device_id, offboard, scope, since, reason, requested_by, requested_at, state, updated_at, deactivate)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'requested', $8, $9) RETURNING id`,
		w.User, w.Device, w.Offboard, w.Scope, w.Since, w.Reason, w.RequestedBy, now.UnixMilli(), w.Deactivate).Scan(&w.ID); err != nil {
		return 0, err
	}
	payload, _ := json.Marshal(map[string]int64{"wipe_id": w.ID})
	if err := appservice.Enqueue(ctx, chain.DB(), tx, now, appservice.JobSpec{Kind: JobWipe, DedupeKey: fmt.Sprintf("wipe:%d", w.ID), Payload: payload}); err != nil {
		return 0, err
	}
	recs := []*audit.Record{wipeRecord(chain, w, "requested", audit.OutcomeSuccess, 0)}
	if w.Force {
		recs = append(recs, wipeRecord(chain, w, "forced", audit.OutcomeSuccess, 0))
	}
	return w.ID, chain.Append(ctx, tx, recs...)
}

func wipeRecord(chain *audit.Chain, w Wipe, step, outcome string, n int) *audit.Record {
	return &audit.Record{Type: audit.TypeWipe, Outcome: outcome, Actor: w.RequestedBy, Detail: chain.Keys().User(w.User),
		Action: step, JobID: w.ID, Count: int64(n)}
}

// LoadWipe reads a wipe's record.
func LoadWipe(ctx context.Context, db *store.DB, id int64) (Wipe, error) {
	var w Wipe
	err := db.R.QueryRowContext(ctx, `SELECT id, user_id, device_id, offboard, scope, since, reason, requested_by, state, revoked, redacted, rooms_left, confirmed_at, last_error, deactivate, held
		FROM wipe WHERE id = $1`, id).Scan(&w.ID, &w.User, &w.Device, &w.Offboard, &w.Scope, &w.Since, &w.Reason, &w.RequestedBy, &w.State,
		&w.Revoked, &w.Redacted, &w.Left, &w.ConfirmedAt, &w.LastError, &w.Deactivate, &w.Held)
	return w, err
}

// WipeHomeserver is what a wipe needs from the homeserver.
type WipeHomeserver interface {
	appservice.SessionEnder
	Devices(ctx context.Context, user string) ([]string, error)
	Redact(ctx context.Context, user, room, eventID, reason, txnID string) error
	JoinedRooms(ctx context.Context, user string) ([]string, error)
	Leave(ctx context.Context, user, room string) error
	// Synapse's admin API, acting as admin.
	Deactivate(ctx context.Context, admin, user string) error
}

var _ WipeHomeserver = (*homeserver.Client)(nil)

// wipeJobs handle wipe jobs. Each step is recorded (and audited) when
// done, so a retried job (homeserver down, a crash) resumes at the step it
// had reached; each step is safe to repeat.
func wipeJobs(env appservice.Env, hs WipeHomeserver, pol func() *policy.Policy, caps appservice.WipeCaps) map[string]appservice.Handler {
	return map[string]appservice.Handler{JobWipe: wipeHandler(env, hs, pol, caps)}
}

// wipeHandler runs a wipe job's steps.
func wipeHandler(env appservice.Env, hs WipeHomeserver, pol func() *policy.Policy, caps appservice.WipeCaps) appservice.Handler {
	return func(ctx context.Context, j *appservice.Job) error {
		p, err := appservice.DecodePayload[struct {
			ID int64 `json:"wipe_id"`
		}](j)
		if err != nil {
			return err
		}
		w, err := LoadWipe(ctx, env.DB, p.ID)
		if err != nil {
			return err
		}
		// step records that the wipe reached next, what the step counted (in
		// column col, if any) and, for the revocation, when it was confirmed.
		// A step the wipe did not ask for (leaving rooms in a plain wipe,
		// redacting with --redact none) moves the state on, unaudited: the
		// trail holds the steps that ran.
		step := func(next string, ran bool, n int, col string, confirmed int64) error {
			return env.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
				// Placeholders in ascending order: SQLite numbers $N by first appearance.
				q := `UPDATE wipe SET state = $1, updated_at = $2, last_error = ''`
				args := []any{next, env.Now().UnixMilli()}
				if col != "" {
					args = append(args, n)
					q += fmt.Sprintf(`, %s = $%d`, col, len(args))
				}
				if confirmed > 0 {
					args = append(args, confirmed)
					q += fmt.Sprintf(`, confirmed_at = $%d`, len(args))
				}
				args = append(args, w.ID)
				if _, err := tx.ExecContext(ctx, q+fmt.Sprintf(` WHERE id = $%d`, len(args)), args...); err != nil {
					return err
				}
				w.State = next
				if !ran {
					return nil
				}
				return env.Chain.Append(ctx, tx, wipeRecord(env.Chain, w, next, audit.OutcomeSuccess, n))
			})
		}
		if w.State == "requested" {
			if (w.Device != "" || w.Deactivate) && !caps.AdminAPI {
				what := "sign out a single device: wipe without -device signs out all of the user's sessions"
				if w.Deactivate {
					what = "deactivate accounts: offboard without -deactivate, and deactivate the account in your identity system"
				}
				return failWipe(ctx, env, w, "revoke", appservice.Permanent(errors.New("this homeserver cannot "+what)))
			}
			before, err := hs.Devices(ctx, w.User)
			if err != nil {
				return err
			}
			target := before
			if w.Device != "" {
				target = nil
				if slices.Contains(before, w.Device) {
					target = []string{w.Device}
				}
			}
			// With nothing to end, the sessions are already gone (a repeat of this step).
			if len(target) > 0 {
				if err := caps.EndSessions(ctx, hs, w.User, target); err != nil {
					return err
				}
			}
			// Confirm: the user's device list no longer holds the wiped sessions.
			after, err := hs.Devices(ctx, w.User)
			if err != nil {
				return err
			}
			if left := intersect(after, target); len(left) > 0 {
				return fmt.Errorf("%d sessions remain after signing out", len(left))
			}
			if err := step("revoked", true, len(target), "revoked", env.Now().UnixMilli()); err != nil {
				return err
			}
		}
		if w.State == "revoked" {
			n, held, err := redactWiped(ctx, env.DB, hs, pol(), w)
			if err != nil {
				return err
			}
			if held > 0 && w.Held == 0 { // (set already: a repeat of this step)
				// Left for the record: a legal hold binds the wipe too.
				err := env.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
					if _, err := tx.ExecContext(ctx, `UPDATE wipe SET held = $1 WHERE id = $2`, held, w.ID); err != nil {
						return err
					}
					return env.Chain.Append(ctx, tx, wipeRecord(env.Chain, w, "held", audit.OutcomeSuccess, held))
				})
				if err != nil {
					return err
				}
			}
			if err := step("redacted", w.Scope != "none", n, "redacted", 0); err != nil {
				return err
			}
		}
		if w.State == "redacted" {
			left := 0
			if w.Offboard {
				rooms, err := hs.JoinedRooms(ctx, w.User)
				if err != nil {
					return err
				}
				for _, room := range rooms {
					if err := hs.Leave(ctx, w.User, room); err != nil {
						return err
					}
					left++
				}
			}
			if err := step("offboarded", w.Offboard, left, "rooms_left", 0); err != nil {
				return err
			}
		}
		if w.State == "offboarded" {
			if w.Deactivate {
				if err := hs.Deactivate(ctx, caps.Admin, w.User); err != nil {
					return err
				}
			}
			return step("done", true, 0, "", 0)
		}
		return nil
	}
}

// intersect lists the IDs in both a and b.
func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func failWipe(ctx context.Context, env appservice.Env, w Wipe, step string, err error) error {
	dbErr := env.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		if _, e := tx.ExecContext(ctx, `UPDATE wipe SET state = 'failed', last_error = $1, updated_at = $2 WHERE id = $3`,
			step+": "+appservice.SafeError(err), env.Now().UnixMilli(), w.ID); e != nil {
			return e
		}
		return env.Chain.Append(ctx, tx, wipeRecord(env.Chain, w, "failed", audit.OutcomeFailure, 0))
	})
	return errors.Join(err, dbErr)
}

// redactWiped redacts, as the user, the messages they sent in scope: in
// rooms policy requires encrypted (phi) or everywhere (all), since the wipe's
// since time. The inbox keeps every event's ID, room, sender and type after
// its content is gone, which is what this needs. A message under a standing
// legal hold (on its room, or on the user) is left, and counted: a wipe
// must not destroy held evidence.
func redactWiped(ctx context.Context, db *store.DB, hs WipeHomeserver, pol *policy.Policy, w Wipe) (redacted, held int, err error) {
	if w.Scope == "none" {
		return 0, 0, nil
	}
	known, err := appservice.LoadKnownRooms(ctx, db)
	if err != nil {
		return 0, 0, err
	}
	heldRooms, userHeld, err := holdsOn(ctx, db, w.User)
	if err != nil {
		return 0, 0, err
	}
	rows, err := db.R.QueryContext(ctx, `SELECT event_id, room_id FROM inbox
		WHERE sender = $1 AND received_at >= $2 AND event_type IN ('m.room.message', 'm.room.encrypted', 'm.sticker') ORDER BY seq`, w.User, w.Since)
	if err != nil {
		return 0, 0, err
	}
	type msg struct{ id, room string }
	var todo []msg
	for rows.Next() {
		var m msg
		if err := rows.Scan(&m.id, &m.room); err != nil {
			rows.Close()
			return 0, 0, err
		}
		if w.Scope != "all" && pol.For(known.PolicyRoom(m.room)).Encryption != policy.EncryptionRequired {
			continue
		}
		if userHeld || heldRooms[m.room] {
			held++
			continue
		}
		todo = append(todo, m)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, 0, err
	}
	for i, m := range todo {
		if err := hs.Redact(ctx, w.User, m.room, m.id, "Removed by a remote wipe", fmt.Sprintf("wipe-%d-%d", w.ID, i)); err != nil {
			return 0, 0, err
		}
	}
	return len(todo), held, nil
}

// holdsOn is the rooms under a standing legal hold, and whether user is.
func holdsOn(ctx context.Context, db *store.DB, user string) (rooms map[string]bool, userHeld bool, err error) {
	rows, err := db.R.QueryContext(ctx, `SELECT room_id, user_id FROM legal_hold WHERE released_at = 0`)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	rooms = map[string]bool{}
	for rows.Next() {
		var room, u string
		if err := rows.Scan(&room, &u); err != nil {
			return nil, false, err
		}
		if room != "" {
			rooms[room] = true
		}
		userHeld = userHeld || (u != "" && u == user)
	}
	return rooms, userHeld, rows.Err()
}

// WaitWipe polls until the wipe is done or failed, or timeout passes.
func WaitWipe(ctx context.Context, db *store.DB, id int64, timeout time.Duration) (Wipe, error) {
	deadline := time.Now().Add(timeout)
	for {
		w, err := LoadWipe(ctx, db, id)
		if err != nil || w.State == "done" || w.State == "failed" || time.Now().After(deadline) {
			return w, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}
