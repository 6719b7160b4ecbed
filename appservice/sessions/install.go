package sessions

import (
	"github.com/matrix-hipaa/matrix-hipaa/appservice"
)

// Install adds the sessions feature to a service: remote wipes and idle
// logoff, their job handlers and the idle sweep.
func Install(svc *appservice.Service) {
	cfg := svc.Config
	RegisterWipe(svc.Runner, svc.HS, svc.Policy.Current, svc.WipeCaps)
	RegisterIdleLogoff(svc.Runner, svc.HS, svc.Policy.Current, svc.WipeCaps)
	bot := cfg.BotMXID()
	idle := &IdleSweeper{Caps: svc.WipeCaps, DB: svc.DB, Policy: svc.Policy.Current, HS: svc.HS, Domain: cfg.Homeserver.Domain,
		Now: svc.Chain.Now, Wake: svc.Runner.Wake, Log: svc.Log, Exempt: func(u string) bool { return u == bot }}
	svc.Loop(idle.Run)
}
