package identity

import (
	"context"
	"errors"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// memberDecider queues a check of every invite and join in a room limited
// to verified clinicians (the bot's own excepted).
func memberDecider(bot string) appservice.EventDecider {
	return func(ev *appservice.Event, room *appservice.RoomInfo, settings policy.Effective, dec *appservice.Decision) {
		if m := appservice.MembershipOf(ev); (m == "invite" || m == "join") && settings.Members == policy.MembersVerified && *ev.StateKey != bot {
			dec.Add(memberCheckJob(ev, m, room))
		}
	}
}

// Install adds the identity feature to a service: the verified clinician
// roster (and its file, if configured), the membership gate of rooms limited
// to verified clinicians with its periodic sweep, and unverified-session
// warnings and sign-outs.
func Install(svc *appservice.Service) {
	cfg := svc.Config
	bot := cfg.BotMXID()
	exempt := func(u string) bool { return u == bot || cfg.Admin.IsAdmin(u) }
	RegisterMemberGate(svc.Runner, GateDeps{HS: svc.HS, Bot: svc.Bot, Policy: svc.Policy.Current, Exempt: exempt})
	svc.Decider.OnEvent(memberDecider(bot))
	members := NewMemberSweeper(svc.DB, svc.Policy.Current, exempt, svc.Chain.Now, svc.Runner.Wake, svc.Log)
	if cfg.Roster != "" {
		roster := &RosterFile{Path: cfg.Roster, DB: svc.DB, Chain: svc.Chain, Log: svc.Log, Changed: members.Poke}
		svc.OnStart(func(ctx context.Context) {
			if err := roster.Load(ctx); err != nil && !errors.As(err, new(RosterRefused)) {
				svc.Log.Error().Err(err).Msg("roster file could not be read; the roster stays as it was")
			}
		})
		svc.Loop(func(ctx context.Context) { roster.Watch(ctx, 2*time.Second) })
	}
	svc.Loop(func(ctx context.Context) { members.Run(ctx, 10*time.Second) })
	RegisterDeviceTrust(svc.Runner, svc.HS, svc.Bot, svc.Policy.Current, svc.WipeCaps)
	trust := &DeviceTrust{DB: svc.DB, Policy: svc.Policy.Current, HS: svc.HS, Now: svc.Chain.Now, Wake: svc.Runner.Wake, Log: svc.Log}
	svc.Loop(trust.Run)
}
