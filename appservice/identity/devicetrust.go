package identity

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"

	"github.com/rs/zerolog"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// Jobs for verified clinicians' sessions they have not cross-signed.
const (
	JobDeviceWarn    = "device_warn"
	JobDeviceSignOut = "device_sign_out"
)

// DeviceHomeserver is what device trust needs from the homeserver.
type DeviceHomeserver interface {
	appservice.SessionEnder
	DeviceInventory(ctx context.Context, user string) ([]homeserver.Device, error)
}

// DirectMessenger is what device trust needs of the bot: a private room with
// a person, and notices in it.
type DirectMessenger interface {
	CreateDM(ctx context.Context, user string) (string, error)
	SendNotice(ctx context.Context, room, inviter, target, text, txnID string) error
}

type devicePayload struct {
	User   string `json:"user"`
	Device string `json:"device"`
}

// untrusted lists the sessions with encryption keys that user has not
// cross-signed. Sessions without keys cannot read encrypted rooms (and idle
// logoff ends abandoned ones).
func untrusted(devs []homeserver.Device) []homeserver.Device {
	var out []homeserver.Device
	for _, d := range devs {
		if d.HasKeys && !d.CrossSigned {
			out = append(out, d)
		}
	}
	return out
}

// DeviceTrust looks at verified clinicians' sessions periodically and queues
// a warning for each one they have not cross-signed and, under sign_out,
// its sign-out once the grace period has passed.
type DeviceTrust struct {
	DB     *store.DB
	Policy func() *policy.Policy
	HS     DeviceHomeserver
	Now    appservice.Clock
	Wake   func()
	Log    zerolog.Logger
}

// Run sweeps until ctx ends. Each sweep asks the homeserver for every
// verified clinician's devices (two requests each), so it runs every 5 min
// under warn and every quarter of the grace (30 s to 10 min) under sign_out:
// a session is ended at most a quarter of the grace late.
func (d *DeviceTrust) Run(ctx context.Context) {
	for {
		if n, err := d.Sweep(ctx); err != nil && ctx.Err() == nil {
			d.Log.Warn().Str("error", appservice.SafeError(err)).Msg("session trust sweep failed")
		} else if n > 0 {
			d.Log.Info().Int("jobs", n).Msg("unverified sessions: warnings or sign-outs queued")
		}
		every := 10 * time.Second // off: look again soon for a policy change
		switch pol := d.Policy(); pol.UnverifiedSessions {
		case policy.UnverifiedWarn:
			every = 5 * time.Minute
		case policy.UnverifiedSignOut:
			every = min(10*time.Minute, max(pol.Grace()/4, 30*time.Second))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// Sweep checks every verified clinician's sessions once and returns how many
// jobs it queued.
func (d *DeviceTrust) Sweep(ctx context.Context) (int, error) {
	pol := d.Policy()
	if pol.UnverifiedSessions != policy.UnverifiedWarn && pol.UnverifiedSessions != policy.UnverifiedSignOut {
		return 0, nil
	}
	entries, err := ListRoster(ctx, d.DB)
	if err != nil {
		return 0, err
	}
	now := d.Now()
	var jobs []appservice.JobSpec
	for i := range entries {
		e := &entries[i]
		if !e.Verified(now) {
			continue
		}
		devs, err := d.HS.DeviceInventory(ctx, e.UserID)
		if err != nil {
			if appservice.Unreachable(err) {
				return 0, err
			}
			d.Log.Debug().Str("error", appservice.SafeError(err)).Msg("could not list a clinician's sessions")
			continue
		}
		for _, dev := range untrusted(devs) {
			var first, warned, signedOut int64
			err := d.DB.R.QueryRowContext(ctx, `SELECT first_seen, warned_at, signed_out_at FROM device_trust WHERE user_id = $1 AND device_id = $2`,
				e.UserID, dev.ID).Scan(&first, &warned, &signedOut)
			if errors.Is(err, sql.ErrNoRows) {
				first = now.UnixMilli()
				if _, err := d.DB.W.ExecContext(ctx, `INSERT INTO device_trust (user_id, device_id, first_seen) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
					e.UserID, dev.ID, first); err != nil {
					return 0, err
				}
			} else if err != nil {
				return 0, err
			}
			payload, _ := json.Marshal(devicePayload{User: e.UserID, Device: dev.ID})
			if warned == 0 {
				jobs = append(jobs, appservice.JobSpec{Kind: JobDeviceWarn, DedupeKey: fmt.Sprintf("devwarn:%s:%s", e.UserID, dev.ID), Payload: payload})
			}
			if pol.UnverifiedSessions == policy.UnverifiedSignOut && signedOut == 0 && now.Sub(time.UnixMilli(first)) >= pol.Grace() {
				jobs = append(jobs, appservice.JobSpec{Kind: JobDeviceSignOut, DedupeKey: fmt.Sprintf("devsignout:%s:%s", e.UserID, dev.ID), Payload: payload})
			}
		}
	}
	if len(jobs) == 0 {
		return 0, nil
	}
	if err := d.DB.Tx(ctx, store.Deferred, func(tx *sql.Tx) error { return appservice.Enqueue(ctx, d.DB, tx, now, jobs...) }); err != nil {
		return 0, err
	}
	if d.Wake != nil {
		d.Wake()
	}
	return len(jobs), nil
}

// stillUntrusted re-reads user's sessions and reports whether device is
// still there and still not cross-signed.
func stillUntrusted(ctx context.Context, hs DeviceHomeserver, user, device string) (bool, error) {
	devs, err := hs.DeviceInventory(ctx, user)
	if err != nil {
		return false, err
	}
	for _, d := range untrusted(devs) {
		if d.ID == device {
			return true, nil
		}
	}
	return false, nil
}

// deviceJobs handle the warning and sign-out jobs.
func deviceJobs(env appservice.Env, hs DeviceHomeserver, dm DirectMessenger, pol func() *policy.Policy, caps appservice.WipeCaps) map[string]appservice.Handler {
	jobs := map[string]appservice.Handler{}
	decode := func(j *appservice.Job) (devicePayload, error) {
		p, err := appservice.DecodePayload[devicePayload](j)
		if err == nil && (p.User == "" || p.Device == "") {
			err = appservice.Permanent(errors.New("bad job payload: no user or device"))
		}
		return p, err
	}
	record := func(ctx context.Context, p devicePayload, col, action string, j *appservice.Job) error {
		return env.DB.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, fmt.Sprintf(`UPDATE device_trust SET %s = $1 WHERE user_id = $2 AND device_id = $3`, col),
				env.Now().UnixMilli(), p.User, p.Device); err != nil {
				return err
			}
			return env.Chain.Append(ctx, tx, &audit.Record{Type: audit.TypeSession, Outcome: audit.OutcomeSuccess, Action: action,
				Detail: env.Chain.Keys().User(p.User), JobID: j.ID, Count: 1})
		})
	}
	jobs[JobDeviceWarn] = func(ctx context.Context, j *appservice.Job) error {
		p, err := decode(j)
		if err != nil {
			return err
		}
		if still, err := stillUntrusted(ctx, hs, p.User, p.Device); err != nil || !still {
			return err // verified (or gone) since the sweep
		}
		room, err := directRoom(ctx, env.DB, dm, p.User)
		if err != nil {
			return err
		}
		text := fmt.Sprintf("your session %s is not verified: you have not cross-signed it, so others cannot tell it is really you. "+
			"Verify it from one of your verified sessions (in Element: Settings → Sessions).", p.Device)
		if g := pol(); g.UnverifiedSessions == policy.UnverifiedSignOut {
			text += fmt.Sprintf(" Hospital policy signs out unverified sessions after %s.", g.Grace())
		}
		if err := dm.SendNotice(ctx, room, "", p.User, text, "devwarn-"+p.Device); err != nil {
			return err
		}
		return record(ctx, p, "warned_at", "unverified_warned", j)
	}
	jobs[JobDeviceSignOut] = func(ctx context.Context, j *appservice.Job) error {
		p, err := decode(j)
		if err != nil {
			return err
		}
		if pol().UnverifiedSessions != policy.UnverifiedSignOut {
			return nil
		}
		if still, err := stillUntrusted(ctx, hs, p.User, p.Device); err != nil || !still {
			return err
		}
		// Where the homeserver cannot end one session, all of them end.
		if err := caps.EndSessions(ctx, hs, p.User, []string{p.Device}); err != nil {
			return err
		}
		return record(ctx, p, "signed_out_at", "unverified_signed_out", j)
	}
	return jobs
}

// directRoom is the bot's DM room with user, created on first use.
func directRoom(ctx context.Context, db *store.DB, dm DirectMessenger, user string) (string, error) {
	var room string
	err := db.R.QueryRowContext(ctx, `SELECT room_id FROM bot_dm WHERE user_id = $1`, user).Scan(&room)
	if err == nil {
		return room, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return "", err
	}
	if room, err = dm.CreateDM(ctx, user); err != nil {
		return "", err
	}
	_, err = db.W.ExecContext(ctx, `INSERT INTO bot_dm (user_id, room_id) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET room_id = excluded.room_id`, user, room)
	return room, err
}
