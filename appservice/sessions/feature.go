package sessions

import (
	"context"
	"maps"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
)

// Feature is remote wipes and idle logoff on the engine: their job
// handlers, and the sweep that finds idle sessions.
type Feature struct {
	env  appservice.Env
	idle *IdleSweeper
}

// New is the sessions feature with env's homeserver.
func New(env appservice.Env) *Feature {
	bot := env.BotUser
	return &Feature{env: env, idle: &IdleSweeper{Caps: env.Caps, DB: env.DB, Policy: env.Policy, HS: env.HS, Domain: env.Config.Homeserver.Domain,
		Now: env.Now, Wake: env.Wake, Log: env.Log, Exempt: func(u string) bool { return u == bot }}}
}

func (f *Feature) Name() string { return "sessions" }

// Jobs handle wipe and idle_logoff jobs.
func (f *Feature) Jobs() map[string]appservice.Handler {
	jobs := wipeJobs(f.env, f.env.HS, f.env.Policy, f.env.Caps)
	maps.Copy(jobs, idleJobs(f.env, f.env.HS, f.env.Policy, f.env.Caps))
	return jobs
}

// Loops run the idle sweep.
func (f *Feature) Loops() []func(context.Context) { return []func(context.Context){f.idle.Run} }
