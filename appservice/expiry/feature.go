// Package expiry is the message-lifetime feature: messages in rooms with a
// lifetime (the policy's, shortened by a room's own m.room.retention within
// bounds) are scheduled as they arrive, redacted when due (and purged from
// Synapse's history), parked while a legal hold stands, rescheduled when the
// policy changes, and members are told their room's lifetime.
package expiry

import (
	"context"
	"database/sql"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// Feature is expiry on the engine.
type Feature struct {
	env  appservice.Env
	keys *audit.Keys
	// HS redacts and purges; StateHS reads a room's m.room.retention
	// (both env.HS, but tests give fakes).
	HS      Redactor
	StateHS RetentionStateReader
	pump    *Pump
}

// New is expiry with env's homeserver.
func New(env appservice.Env) *Feature {
	f := &Feature{env: env, keys: env.Chain.Keys(), pump: &Pump{DB: env.DB, Now: env.Now, Wake: env.Wake, Log: env.Log}}
	if env.HS != nil {
		f.HS, f.StateHS = env.HS, env.HS
	}
	return f
}

func (f *Feature) Name() string { return "expiry" }

// Jobs handle expire, purge_history and room_retention jobs.
func (f *Feature) Jobs() map[string]appservice.Handler {
	cfg := f.env.Config
	jobs := expiryHandlers(f.env, f.HS, cfg.Homeserver.PurgeHistory, cfg.Jobs.ExpireAs == "bot")
	jobs[JobRoomRetention] = roomRetentionHandler(f.env, f.StateHS)
	return jobs
}

// SeesCiphertext: encrypted messages expire too, where a lifetime can apply.
func (f *Feature) SeesCiphertext(pol *policy.Policy, room *appservice.RoomInfo) bool {
	return pol.MayExpire() || room.State.MaxLifetime != 0
}

// DecideEvent schedules the message's expiry, queues the check of a room's
// own retention change, and tells members of a new lifetime.
func (f *Feature) DecideEvent(ev *appservice.Event, room *appservice.RoomInfo, pol *policy.Policy, settings policy.Effective, dec *appservice.Decision) {
	if exp, ok := expiryFor(ev, settings, room.State); ok {
		dec.Row(f, exp)
	}
	if ev.Type == "m.room.encrypted" && ev.StateKey == nil {
		return
	}
	if job, ok := retentionChangeJob(ev, room, settings); ok {
		dec.Add(job)
	}
	if a, ok := lifetimeNotice(ev, room, settings); ok {
		dec.AddRecorded(appservice.ActionJob(a, ev.RoomID, "notice:retention:"+ev.ID, ev.Type, settings.DryRun, pol.Hash, f.keys))
	}
}

// SaveRows stores the batch's expiries in the dispatcher's transaction.
func (f *Feature) SaveRows(ctx context.Context, db *store.DB, tx *sql.Tx, rows []any) error {
	list := make([]Expiry, len(rows))
	for i, r := range rows {
		list[i] = r.(Expiry)
	}
	return scheduleExpiries(ctx, db, tx, list)
}

// Loops run the pump that queues due expiries.
func (f *Feature) Loops() []func(context.Context) {
	return []func(context.Context){f.pump.Run}
}

// PolicyChanged tells rooms of their new lifetime, then applies the new
// lifetimes to the messages already waiting.
func (f *Feature) PolicyChanged(ctx context.Context, old, p *policy.Policy) {
	log := f.env.Log
	if n, err := NoticeLifetimeChanges(ctx, f.env.DB, f.env.Chain, old, p); err != nil {
		log.Error().Err(err).Msg("could not tell rooms of their new message lifetime")
	} else if n > 0 {
		log.Info().Int("rooms", n).Msg("telling rooms of their new message lifetime")
		f.env.Wake()
	}
	if n, err := RescheduleExpiries(ctx, f.env.DB, p, f.env.Now()); err != nil {
		log.Error().Err(err).Msg("could not apply the new policy's lifetimes to waiting messages")
	} else if n > 0 {
		log.Info().Int64("messages", n).Msg("shorter lifetimes brought waiting messages' expiry forward")
	}
}
