package identity

import (
	"context"
	"errors"
	"maps"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// Feature is identity on the engine: the verified clinician roster (and
// its file, if configured), the membership gate of rooms limited to
// verified clinicians with its periodic sweep, and unverified-session
// warnings and sign-outs.
type Feature struct {
	env     appservice.Env
	exempt  func(string) bool
	members *MemberSweeper
	roster  *RosterFile // nil: no roster file
	trust   *DeviceTrust
}

// New is the identity feature with env's homeserver and bot.
func New(env appservice.Env) *Feature {
	cfg, bot := env.Config, env.BotUser
	f := &Feature{env: env, exempt: func(u string) bool { return u == bot || cfg.Admin.IsAdmin(u) }}
	f.members = NewMemberSweeper(env.DB, env.Policy, f.exempt, env.Now, env.Wake, env.Log)
	if cfg.Roster != "" {
		f.roster = &RosterFile{Path: cfg.Roster, DB: env.DB, Chain: env.Chain, Log: env.Log, Changed: f.members.Poke}
	}
	f.trust = &DeviceTrust{DB: env.DB, Policy: env.Policy, HS: env.HS, Now: env.Now, Wake: env.Wake, Log: env.Log}
	return f
}

func (f *Feature) Name() string { return "identity" }

// Jobs handle check_member, device_warn and device_sign_out jobs.
func (f *Feature) Jobs() map[string]appservice.Handler {
	jobs := gateJobs(f.env, GateDeps{HS: f.env.HS, Bot: f.env.Bot, Policy: f.env.Policy, Exempt: f.exempt})
	maps.Copy(jobs, deviceJobs(f.env, f.env.HS, f.env.Bot, f.env.Policy, f.env.Caps))
	return jobs
}

// DecideEvent queues a check of every invite and join in a room limited to
// verified clinicians (the bot's own excepted).
func (f *Feature) DecideEvent(ev *appservice.Event, room *appservice.RoomInfo, _ *policy.Policy, settings policy.Effective, dec *appservice.Decision) {
	if m := appservice.MembershipOf(ev); (m == "invite" || m == "join") && settings.Members == policy.MembersVerified && *ev.StateKey != f.env.BotUser {
		dec.Add(memberCheckJob(ev, m, room))
	}
}

// Start loads the roster file, if there is one.
func (f *Feature) Start(ctx context.Context) {
	if f.roster == nil {
		return
	}
	if err := f.roster.Load(ctx); err != nil && !errors.As(err, new(RosterRefused)) {
		f.env.Log.Error().Err(err).Msg("roster file could not be read; the roster stays as it was")
	}
}

// Loops watch the roster file, sweep members and check sessions.
func (f *Feature) Loops() []func(context.Context) {
	loops := []func(context.Context){
		func(ctx context.Context) { f.members.Run(ctx, 10*time.Second) },
		f.trust.Run,
	}
	if f.roster != nil {
		loops = append(loops, func(ctx context.Context) { f.roster.Watch(ctx, 2*time.Second) })
	}
	return loops
}
