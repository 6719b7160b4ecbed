package appservice

import (
	"context"
	"time"
)

// How this homeserver ends sessions: shared by every feature that signs
// people out (wipes, idle logoff, unverified sessions).

// SessionEnder ends sessions: all of a user's as the user, or single
// devices through Synapse's admin API acting as admin.
type SessionEnder interface {
	SignOutEverywhere(ctx context.Context, user string) error
	DeleteDevices(ctx context.Context, admin, user string, devices []string) error
}

// WipeCaps is what the homeserver allows a wipe, decided at start-up from
// homeserver.software.
type WipeCaps struct {
	// AdminAPI: Synapse's admin API, used acting as Admin (the bot, made a
	// server admin): single devices can be deleted, accounts deactivated.
	AdminAPI bool
	Admin    string
	// LastSeenGranularity is how stale a session's last-seen time may be
	// while it is in use: Synapse records a session's activity at most once
	// every two minutes (LAST_SEEN_GRANULARITY), so a session it shows as
	// unused for the idle timeout may have been used a moment ago.
	LastSeenGranularity time.Duration
}

// IdleAfter is how long a session's last-seen time must be in the past for
// it to be idle past timeout, whatever the homeserver's granularity.
func (c WipeCaps) IdleAfter(timeout time.Duration) time.Duration {
	return timeout + c.LastSeenGranularity
}

// EndSessions ends devices of user where the homeserver can end single
// sessions, and every session of user where it cannot.
func (c WipeCaps) EndSessions(ctx context.Context, hs SessionEnder, user string, devices []string) error {
	if c.AdminAPI {
		return hs.DeleteDevices(ctx, c.Admin, user, devices)
	}
	return hs.SignOutEverywhere(ctx, user)
}

// Describe says what a wipe can do here, for the start-up log.
func (c WipeCaps) Describe() string {
	if c.AdminAPI {
		return "Synapse admin API: delete single devices or all, deactivate on offboarding"
	}
	return "all sessions (POST /logout/all as the user); single devices and deactivation: not offered by this homeserver"
}
