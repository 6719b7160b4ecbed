package enforce

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/bot"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
	"maunium.net/go/mautrix"
)

// Jobs are a handler for every action kind. homeserver.software decides
// which admin APIs exist.
func (f *Feature) Jobs() map[string]appservice.Handler {
	hs, b, botUser, software := f.hs, f.b, f.env.BotUser, f.software
	jobs := map[string]appservice.Handler{}
	decode := appservice.DecodePayload[appservice.ActionPayload]
	needBot := func() error {
		if b == nil {
			return appservice.Permanent(errors.New("no E2EE bot configured"))
		}
		return nil
	}
	jobs[string(policy.ActRedact)] = redactHandler(hs, botUser)
	// Room settings are set as the creator (who has the power in rooms
	// people create); if the creator may not (left, or demoted), as the bot,
	// which may have been given the power.
	setState := func(eventType, key string, content func(p appservice.ActionPayload) map[string]any) appservice.Handler {
		return func(ctx context.Context, j *appservice.Job) error {
			p, err := decode(j)
			if err != nil {
				return err
			}
			if safe, ok := safeStateValues[j.Kind]; ok && p.Value != safe {
				// A room fix only ever tightens: whatever queued this, it
				// does not open a room.
				return appservice.Permanent(fmt.Errorf("%s to %q refused: the only value a fix sets is %q", j.Kind, p.Value, safe))
			}
			want := content(p)
			actor := p.ActAs
			err = hs.SendState(ctx, actor, p.Room, eventType, key, want)
			if errors.Is(err, mautrix.MForbidden) && b != nil && j.Attempts > 0 {
				if berr := b.SendState(ctx, p.Room, eventType, key, want); berr == nil {
					actor, err = botUser, nil
				}
			}
			if actor == botUser && errors.Is(err, mautrix.MForbidden) {
				// Queued as the bot (the creator is on another server) and
				// the bot lacks the power: listed as a problem, not retried.
				return appservice.Permanent(err)
			}
			if err != nil {
				return err
			}
			// A homeserver may accept an event and then soft-fail it (Dendrite
			// does when the sender's power changed in between): only the
			// room's state says whether the change took.
			got, err := hs.StateContent(ctx, actor, p.Room, eventType, key)
			if err != nil && !errors.Is(err, mautrix.MNotFound) {
				return err
			}
			for k, v := range want {
				if got[k] != v {
					return fmt.Errorf("the homeserver accepted %s but the room's state does not have it (soft-failed)", eventType)
				}
			}
			return nil
		}
	}
	jobs[string(policy.ActEnableEncryption)] = setState("m.room.encryption", "", func(appservice.ActionPayload) map[string]any {
		return map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}
	})
	jobs[string(policy.ActSetJoinRule)] = setState("m.room.join_rules", "", func(p appservice.ActionPayload) map[string]any {
		return map[string]any{"join_rule": p.Value}
	})
	jobs[string(policy.ActSetGuestAccess)] = setState("m.room.guest_access", "", func(p appservice.ActionPayload) map[string]any {
		return map[string]any{"guest_access": p.Value}
	})
	jobs[string(policy.ActQuarantineMedia)] = func(ctx context.Context, j *appservice.Job) error {
		p, err := decode(j)
		if err != nil {
			return err
		}
		err = hs.QuarantineMedia(ctx, software, botUser, p.Value)
		if errors.Is(err, homeserver.ErrNoQuarantine) {
			return appservice.Permanent(err)
		}
		return err
	}
	jobs[string(policy.ActBotJoin)] = func(ctx context.Context, j *appservice.Job) error {
		p, err := decode(j)
		if err != nil {
			return err
		}
		if err := needBot(); err != nil {
			return err
		}
		m, err := b.EnsureJoined(ctx, p.Room, p.ActAs)
		if err != nil {
			return waitForBot(err)
		}
		return recordStanding(ctx, f.env.DB, p.Room, m, f.env.Now())
	}
	jobs[string(policy.ActNotice)] = func(ctx context.Context, j *appservice.Job) error {
		p, err := decode(j)
		if err != nil {
			return err
		}
		if err := needBot(); err != nil {
			return err
		}
		err = waitForBot(b.SendNotice(ctx, p.Room, p.ActAs, p.Target, p.Reason, fmt.Sprintf("hipaa-job-%d", j.ID)))
		if p.ActAs == "" && errors.Is(err, mautrix.MForbidden) {
			return appservice.Permanent(fmt.Errorf("the bot is not in the room and no local member can invite it: %w", err))
		}
		return err
	}
	return jobs
}

// safeStateValues are the only values the service's room fixes set.
var safeStateValues = map[string]string{string(policy.ActSetJoinRule): "invite", string(policy.ActSetGuestAccess): "forbidden"}

// JobOutcome keeps room_problem in step with job outcomes: an action that
// fails for good in a room is listed until the same action succeeds there.
func (f *Feature) JobOutcome(ctx context.Context, tx *sql.Tx, j *appservice.Job, state, errText string, now time.Time) error {
	return trackProblem(ctx, f.env.DB, tx, j, state, errText, now)
}

func trackProblem(ctx context.Context, db *store.DB, tx *sql.Tx, j *appservice.Job, state, errText string, now time.Time) error {
	p, err := appservice.DecodePayload[appservice.ActionPayload](j)
	if err != nil || p.Room == "" || j.DryRun {
		return nil
	}
	if state == "failed" {
		_, err = db.Exec(ctx, tx, upsertProblem, p.Room, j.Kind, errText, now.UnixMilli())
	} else {
		_, err = db.Exec(ctx, tx, `DELETE FROM room_problem WHERE room_id = $1 AND action = $2`, p.Room, j.Kind)
	}
	return err
}

// redactHandler redacts the job's event as ActAs (its sender: anyone may
// redact their own events). A fixed transaction ID per job makes a retried
// redaction a no-op.
func redactHandler(hs *homeserver.Client, botUser string) appservice.Handler {
	return func(ctx context.Context, j *appservice.Job) error {
		p, err := appservice.DecodePayload[appservice.ActionPayload](j)
		if err != nil {
			return err
		}
		err = hs.Redact(ctx, p.ActAs, p.Room, p.EventID, p.Reason, fmt.Sprintf("hipaa-job-%d", j.ID))
		if p.ActAs == botUser && errors.Is(err, mautrix.MForbidden) {
			// A remote sender's message, and the bot lacks the power: no
			// retry will change that; the room is listed as a problem.
			return appservice.Permanent(fmt.Errorf("the bot may not redact others' messages in this room: %w", err))
		}
		return err
	}
}

// waitForBot turns "the bot is still logging in" into a wait, not a failed attempt.
func waitForBot(err error) error {
	if errors.Is(err, bot.ErrNotReady) {
		return appservice.RetryLater(time.Second, err)
	}
	return err
}

const upsertProblem = `INSERT INTO room_problem (room_id, action, detail, since) VALUES ($1, $2, $3, $4)
ON CONFLICT (room_id, action) DO UPDATE SET detail = excluded.detail`

// recordStanding keeps the bot's power in a room, and what the room's
// settings need, for the rooms listing and the metric.
func recordStanding(ctx context.Context, db *store.DB, room string, m bot.Membership, now time.Time) error {
	return db.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
		_, err := db.Exec(ctx, tx, `INSERT INTO room_bot (room_id, power, needed, encrypted, updated_at) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (room_id) DO UPDATE SET power = excluded.power, needed = excluded.needed, encrypted = excluded.encrypted, updated_at = excluded.updated_at`,
			room, m.Power, m.Needed, m.Encrypted, now.UnixMilli())
		return err
	})
}
