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
	// People's direct messages with the bot (the rules, !breakglass) and
	// the emergency accesses open.
	dms     dmRooms
	grants  grants
	dmBot   DMBot                // nil without a bot
	glassHS BreakGlassHomeserver // nil without a homeserver
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
	if env.Bot != nil {
		f.dmBot = env.Bot
		// What people write to the bot is read: their DM rooms' keys are kept.
		env.Bot.AddReads(func(_ context.Context, room string) bool { _, ok := f.dms.owner(room); return ok })
	}
	if env.HS != nil {
		f.glassHS = env.HS
	}
	return f
}

// UseBot gives the feature a bot and a homeserver of the test's making.
func (f *Feature) UseBot(b DMBot, hs BreakGlassHomeserver) { f.dmBot, f.glassHS = b, hs }

func (f *Feature) Name() string { return "identity" }

// Jobs handle check_member, device_warn and device_sign_out jobs.
func (f *Feature) Jobs() map[string]appservice.Handler {
	jobs := gateJobs(f.env, GateDeps{HS: f.env.HS, Bot: f.env.Bot, Policy: f.env.Policy, Exempt: f.exempt})
	maps.Copy(jobs, deviceJobs(f.env, f.env.HS, f.messenger(), f.env.Policy, f.env.Caps))
	jobs[JobTraining] = f.trainingHandler
	jobs[JobDMMessage] = f.dmHandler
	jobs[JobBreakGlassEnd] = f.endHandler
	return jobs
}

// DecideEvent queues a check of every invite and join in a room limited to
// verified clinicians (the bot's own excepted), the rules for a local
// person joining a room under policy (training on), a reading of what
// people write to the bot, and counts the messages of emergency access.
func (f *Feature) DecideEvent(ev *appservice.Event, room *appservice.RoomInfo, pol *policy.Policy, settings policy.Effective, dec *appservice.Decision) {
	owner, isDM := f.dms.owner(ev.RoomID)
	m := appservice.MembershipOf(ev)
	if (m == "invite" || m == "join") && settings.Members == policy.MembersVerified && *ev.StateKey != f.env.BotUser {
		dec.Add(memberCheckJob(ev, m, room))
	}
	if m == "join" && pol.Training == policy.On && !isDM && settings.Encryption == policy.EncryptionRequired && f.local(*ev.StateKey) &&
		ev.RoomID != f.env.Config.Admin.Room && ev.RoomID != f.env.Config.Compliance.PrivacyOfficerRoom {
		dec.Add(trainingJob(ev))
	}
	if ev.StateKey != nil {
		return
	}
	if isDM && ev.Sender == owner && (ev.Type == "m.room.message" || ev.Type == "m.room.encrypted" || ev.Type == "m.reaction") {
		dec.Add(dmJob(ev))
	}
	if id, ok := f.grants.open(ev.RoomID, ev.Sender, ev.ReceivedAt); ok && (ev.Type == "m.room.encrypted" || ev.Type == "m.room.message" || ev.Type == "m.sticker") {
		dec.Row(f, glassCount{id})
	}
}

// local: a person of this homeserver, not the bot.
func (f *Feature) local(user string) bool {
	return user != f.env.BotUser && appservice.ServerOf(user) == f.env.Config.Homeserver.Domain && f.env.Config.Homeserver.Domain != ""
}

// SeesCiphertext: encrypted events in people's DMs with the bot (to read
// them) and in rooms with an emergency access open (to count them).
func (f *Feature) SeesCiphertext(_ *policy.Policy, room *appservice.RoomInfo) bool {
	_, dm := f.dms.owner(room.ID)
	return dm || f.grants.inRoom(room.ID)
}

// Start loads the DM rooms and open emergency accesses, and the roster
// file, if there is one.
func (f *Feature) Start(ctx context.Context) {
	if err := f.dms.load(ctx, f.env.DB); err != nil {
		f.env.Log.Error().Err(err).Msg("could not load the bot's direct-message rooms")
	}
	if err := f.grants.load(ctx, f.env.DB); err != nil {
		f.env.Log.Error().Err(err).Msg("could not load the open emergency accesses")
	}
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
