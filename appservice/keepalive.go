package appservice

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// KeepAliveType is the event type of the bot's keep-alive posts. They are
// the service talking to itself: dropped on arrival, neither stored nor audited.
const KeepAliveType = "org.matrix_hipaa.keepalive"

// keepAliveAlias is the local alias of the bot's keep-alive room.
const keepAliveAlias = "_hipaa_keepalive"

// KeepAlive posts a keep-alive event whenever nothing has arrived for the
// interval (see config homeserver.keepalive).
type KeepAlive struct {
	cli      *mautrix.Client
	domain   string
	interval time.Duration
	lastSeen *atomic.Int64 // unix ms of the last transaction with events
	log      zerolog.Logger
	sent     func()
	room     id.RoomID
}

// resolveRoom finds the bot's keep-alive room, creating it on first use.
func (k *KeepAlive) resolveRoom(ctx context.Context) error {
	alias := id.RoomAlias("#" + keepAliveAlias + ":" + k.domain)
	if resp, err := k.cli.ResolveAlias(ctx, alias); err == nil {
		k.room = resp.RoomID
		return nil
	} else if !errors.Is(err, mautrix.MNotFound) {
		return fmt.Errorf("resolve keep-alive room: %w", err)
	}
	resp, err := k.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "private_chat", RoomAliasName: keepAliveAlias, Visibility: "private",
	})
	if err != nil {
		return fmt.Errorf("create keep-alive room: %w", err)
	}
	k.room = resp.RoomID
	return nil
}

// Run posts until ctx ends. Failures are logged and retried next tick.
func (k *KeepAlive) Run(ctx context.Context) {
	t := time.NewTicker(k.interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if time.Since(time.UnixMilli(k.lastSeen.Load())) < k.interval {
			continue
		}
		if k.room == "" {
			if err := k.resolveRoom(ctx); err != nil {
				k.log.Warn().Err(err).Msg("keep-alive room not available")
				continue
			}
		}
		_, err := k.cli.SendMessageEvent(ctx, k.room, event.Type{Type: KeepAliveType, Class: event.MessageEventType}, map[string]any{},
			mautrix.ReqSendEvent{TransactionID: fmt.Sprintf("ka-%d", time.Now().UnixNano())})
		if err != nil {
			k.log.Warn().Err(err).Msg("keep-alive post failed")
			continue
		}
		k.lastSeen.Store(time.Now().UnixMilli())
		k.sent()
	}
}
