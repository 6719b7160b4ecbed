// Package enforce is the encryption and room-settings feature: it turns
// the policy's rules (encryption required, plaintext, attachments, public
// rooms, guest access) into jobs that fix a room or remove what broke the
// rules, applies them, enrols known rooms when the policy changes, and keeps
// the rooms listing of what failed and of the bot's standing.
package enforce

import (
	"fmt"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/bot"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// Feature is enforcement on the engine.
type Feature struct {
	env      appservice.Env
	keys     *audit.Keys
	software string
	// b may be nil (tests without a bot): bot_join and notice jobs then fail
	// for good.
	b  *bot.Bot
	hs *homeserver.Client
}

// New is enforcement with env's homeserver and bot.
func New(env appservice.Env) *Feature {
	return &Feature{env: env, keys: env.Chain.Keys(), software: env.Config.Homeserver.Software, b: env.Bot, hs: env.HS}
}

func (f *Feature) Name() string { return "enforce" }

// noticeWindow is how often one person is told the same thing in one room:
// a client that keeps sending plaintext has every message redacted, but its
// user gets one notice per window, not one per message.
const noticeWindow = 10 * time.Minute

// DecideEvent runs the policy's rules on the event and queues a job, with
// its policy.decision record, for each action.
func (f *Feature) DecideEvent(ev *appservice.Event, room *appservice.RoomInfo, pol *policy.Policy, settings policy.Effective, dec *appservice.Decision) {
	actions := policy.Decide(&policy.Context{
		Event:    policy.Event{ID: ev.ID, Type: ev.Type, Sender: ev.Sender, StateKey: ev.StateKey, Content: ev.ContentJSON()},
		Room:     room.State,
		Settings: settings,
		Bot:      f.env.BotUser,
	})
	for _, a := range actions {
		a = actorFor(a, f.env.BotUser)
		key := fmt.Sprintf("%s:%s:%s", a.Kind, a.Rule, a.EventID)
		if a.Kind == policy.ActQuarantineMedia {
			key += ":" + a.Value // a file and its thumbnail
		}
		if a.Kind == policy.ActNotice {
			// The window comes from when the service received the event: the
			// same for a replayed decision, and not the event's own
			// origin_server_ts, which its (perhaps remote) server chooses and
			// could vary to get one notice per message.
			bucket := ev.ReceivedAt / noticeWindow.Milliseconds()
			key = fmt.Sprintf("%s:%s:%s:%s:%d", a.Kind, a.Rule, ev.RoomID, a.Target, bucket)
		}
		dec.AddRecorded(appservice.ActionJob(a, ev.RoomID, key, ev.Type, settings.DryRun, pol.Hash, f.keys))
	}
}

// actorFor keeps actions from being queued as someone the service cannot act
// as. The application service acts only as local users: an action as a
// remote sender or creator would fail on every retry. The bot acts instead
// where it has the power (else the job fails once, and the room is listed as
// a problem); a notice's inviter is dropped, so a bot not yet in the room
// fails once rather than retrying.
func actorFor(a policy.Action, bot string) policy.Action {
	if a.ActAs == "" || appservice.SameServer(a.ActAs, bot) {
		return a
	}
	switch a.Kind {
	case policy.ActNotice, policy.ActBotJoin:
		a.ActAs = ""
	default:
		a.ActAs = bot
	}
	return a
}
