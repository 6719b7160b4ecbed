package appservice

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/bot"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// KeepAliveType is the event type of the bot's keep-alive posts. They are
// the service talking to itself: dropped on arrival, neither stored nor audited.
const KeepAliveType = "org.matrix_hipaa.keepalive"

// keepAliveAlias is the local alias of the bot's keep-alive room (the
// registration reserves it).
const keepAliveAlias = config.KeepAliveAlias

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
		return k.comply(ctx)
	} else if !errors.Is(err, mautrix.MNotFound) {
		return fmt.Errorf("resolve keep-alive room: %w", err)
	}
	resp, err := k.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "private_chat", RoomAliasName: keepAliveAlias, Visibility: "private", InitialState: bot.CompliantRoomState(),
	})
	if err != nil {
		return fmt.Errorf("create keep-alive room: %w", err)
	}
	k.room = resp.RoomID
	return nil
}

// comply brings a keep-alive room made by an older version (unencrypted,
// guests allowed by the private_chat preset) under policy.
func (k *KeepAlive) comply(ctx context.Context) error {
	var enc event.EncryptionEventContent
	if err := k.cli.StateEvent(ctx, k.room, event.StateEncryption, "", &enc); err != nil || enc.Algorithm == "" {
		if _, err := k.cli.SendStateEvent(ctx, k.room, event.StateEncryption, "", &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}); err != nil {
			return fmt.Errorf("encrypt the keep-alive room: %w", err)
		}
	}
	var ga event.GuestAccessEventContent
	if err := k.cli.StateEvent(ctx, k.room, event.StateGuestAccess, "", &ga); err != nil || ga.GuestAccess != event.GuestAccessForbidden {
		if _, err := k.cli.SendStateEvent(ctx, k.room, event.StateGuestAccess, "", &event.GuestAccessEventContent{GuestAccess: event.GuestAccessForbidden}); err != nil {
			return fmt.Errorf("forbid guests in the keep-alive room: %w", err)
		}
	}
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
