package bot

import (
	"context"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// syncer is mautrix's default syncer with two changes. Its filter keeps
// what people write out of the bot's sync (the bot needs membership, room
// state and to-device key traffic, never messages). And it is deliberately
// not a DispatchableSyncer, so mautrix's crypto helper registers no
// handler that would decrypt messages.
type syncer struct {
	inner  *mautrix.DefaultSyncer
	filter *mautrix.Filter
	log    zerolog.Logger
}

// contentTypes are events whose content people write; the bot never syncs them.
var contentTypes = []event.Type{
	event.EventMessage, event.EventEncrypted, event.EventSticker, event.EventReaction, event.EventRedaction,
	event.NewEventType("m.poll.start"), event.NewEventType("m.poll.response"),
}

func newSyncer(cli *mautrix.Client, log zerolog.Logger, receipts bool) *syncer {
	f := mautrix.DefaultFilter()
	f.Presence = &mautrix.FilterPart{NotTypes: []event.Type{event.NewEventType("*")}}
	f.Room.Ephemeral = &mautrix.FilterPart{NotTypes: []event.Type{event.NewEventType("*")}}
	if receipts {
		// Read receipts only: who read up to which event, no content.
		f.Room.Ephemeral = &mautrix.FilterPart{Types: []event.Type{event.EphemeralEventReceipt}}
	}
	f.Room.Timeline.NotTypes = contentTypes
	f.Room.Timeline.Limit = 50
	inner := mautrix.NewDefaultSyncer()
	inner.FilterJSON = &f
	return &syncer{inner: inner, filter: &f, log: log}
}

func (s *syncer) ProcessResponse(ctx context.Context, resp *mautrix.RespSync, since string) error {
	return s.inner.ProcessResponse(ctx, resp, since)
}

func (s *syncer) OnFailedSync(res *mautrix.RespSync, err error) (time.Duration, error) {
	s.log.Warn().Err(err).Msg("bot sync failed; retrying in 5s")
	return 5 * time.Second, nil
}

func (s *syncer) GetFilterJSON(id.UserID) *mautrix.Filter { return s.filter }

func (s *syncer) OnSync(cb mautrix.SyncHandler)   { s.inner.OnSync(cb) }
func (s *syncer) OnEvent(cb mautrix.EventHandler) { s.inner.OnEvent(cb) }
func (s *syncer) OnEventType(t event.Type, cb mautrix.EventHandler) {
	s.inner.OnEventType(t, cb)
}
