package appservice

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"slices"
	"sync"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// JobVerifyLinks confirms a room's claimed aliases and parent spaces with
// the homeserver. A room's own state is any room admin's to write: an alias
// counts only when the directory resolves it to the room, a parent space only
// when the space lists the room in its m.space.child. Policy overrides that
// loosen anything match only confirmed links (policy.Room).
const JobVerifyLinks = "verify_links"

// RoomLinks are a room's confirmed aliases and parent spaces.
type RoomLinks struct{ Aliases, Spaces []string }

// storedRoom is policyRoom for a room as room_state stores it: aliases and
// spaces as stored lists, and the confirmed links of every room.
func storedRoom(id, aliases, spaces string, links map[string]RoomLinks) policy.Room {
	return policyRoom(id, splitList(aliases), splitList(spaces), links[id])
}

// policyRoom is a room as policy matches it: what its state claims, and
// what of that (or of earlier claims still true) the homeserver confirmed.
func policyRoom(id string, aliases, spaces []string, l RoomLinks) policy.Room {
	return policy.Room{ID: id, Aliases: aliases, Spaces: spaces, VerifiedAliases: l.Aliases, VerifiedSpaces: l.Spaces}
}

// loadRoomLinks reads every room's confirmed links.
func loadRoomLinks(ctx context.Context, db *store.DB) (map[string]RoomLinks, error) {
	return queryLinks(ctx, db, `SELECT room_id, kind, value FROM room_link ORDER BY room_id, kind, value`)
}

// roomLinksOf reads one room's confirmed links.
func roomLinksOf(ctx context.Context, db *store.DB, room string) (RoomLinks, error) {
	m, err := queryLinks(ctx, db, `SELECT room_id, kind, value FROM room_link WHERE room_id = $1 ORDER BY kind, value`, room)
	return m[room], err
}

func queryLinks(ctx context.Context, db *store.DB, q string, args ...any) (map[string]RoomLinks, error) {
	rows, err := db.R.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]RoomLinks{}
	for rows.Next() {
		var room, kind, value string
		if err := rows.Scan(&room, &kind, &value); err != nil {
			return nil, err
		}
		l := out[room]
		if kind == "alias" {
			l.Aliases = append(l.Aliases, value)
		} else {
			l.Spaces = append(l.Spaces, value)
		}
		out[room] = l
	}
	return out, rows.Err()
}

// Links are the confirmed links in memory, for the dispatcher's decisions;
// the verify_links job updates them after each commit.
type Links struct {
	mu sync.RWMutex
	m  map[string]RoomLinks
}

// LoadLinks reads the confirmed links into memory.
func LoadLinks(ctx context.Context, db *store.DB) (*Links, error) {
	m, err := loadRoomLinks(ctx, db)
	if err != nil {
		return nil, err
	}
	return &Links{m: m}, nil
}

// Of is a room's confirmed links (nil-safe: none).
func (l *Links) Of(room string) RoomLinks {
	if l == nil {
		return RoomLinks{}
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.m[room]
}

func (l *Links) set(room string, v RoomLinks) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(v.Aliases)+len(v.Spaces) == 0 {
		delete(l.m, room)
	} else {
		l.m[room] = v
	}
}

// linkJob queues a verification of room's links when ev changes a claim:
// the room's canonical alias or parent spaces, or, seen from a space, its
// listing of the room (m.space.child, whose state key is the child).
func linkJob(ev *Event, room *RoomInfo) (JobSpec, bool) {
	if ev.StateKey == nil && ev.Type != "m.room.redaction" {
		return JobSpec{}, false
	}
	target := ev.RoomID
	switch {
	case ev.Type == "m.room.canonical_alias" && *ev.StateKey == "":
	case ev.Type == "m.room.redaction" && room != nil && len(room.Aliases)+len(room.Spaces) > 0:
		// It may have redacted an alias or parent link: redacted state
		// has no effect, and the check reads what remains. (Only where
		// there is a claim to lose: redactions are common.)
	case ev.Type == "m.space.parent" && *ev.StateKey != "":
	case ev.Type == "m.space.child" && *ev.StateKey != "":
		target = *ev.StateKey
	default:
		return JobSpec{}, false
	}
	payload, _ := json.Marshal(ActionPayload{Room: target, EventID: ev.ID, ActAs: ev.Sender})
	return JobSpec{Kind: JobVerifyLinks, DedupeKey: "verify_links:" + target + ":" + ev.ID, Payload: payload}, true
}

// LinkHomeserver is what verification asks of the homeserver.
type LinkHomeserver interface {
	RoomState(ctx context.Context, user, room string) ([]json.RawMessage, error)
	StateContent(ctx context.Context, user, room, eventType, stateKey string) (map[string]any, error)
	ResolveAlias(ctx context.Context, user, alias string) (string, error)
}

// RegisterLinkVerification handles verify_links: the room's current state
// is read from the homeserver (not the event that triggered the check, which
// may since have been replaced, soft-failed or redacted), each claimed alias
// (and each alias confirmed before) is resolved in the directory, and each
// claimed parent space is asked whether it lists the room. What is confirmed
// replaces the room's rows in room_link. Then enrol runs (it may be nil):
// a room that lost a confirmed link may now fall under stricter policy.
func RegisterLinkVerification(r *Runner, hs LinkHomeserver, links *Links, bot string, enrol func(context.Context) error) {
	r.Handle(JobVerifyLinks, func(ctx context.Context, j *Job) error {
		p, err := DecodePayload[ActionPayload](j)
		if err != nil {
			return err
		}
		creator, knownAliases, knownSpaces, err := roomClaims(ctx, r.db, p.Room)
		if err != nil {
			return err
		}
		state, err := FirstAllowed(LocalActors(bot, creator, p.ActAs), func(u string) ([]json.RawMessage, error) { return hs.RoomState(ctx, u, p.Room) })
		var aliases, spaces []string
		switch {
		case err == nil:
			aliases, spaces = claimedLinks(state)
		case errors.Is(err, mautrix.MForbidden) || errors.Is(err, mautrix.MNotFound):
			// No local member can read it now: check the claims as the
			// service last saw them.
			aliases, spaces = knownAliases, knownSpaces
		default:
			return err
		}
		prev, err := roomLinksOf(ctx, r.db, p.Room)
		if err != nil {
			return err
		}
		var got RoomLinks
		for _, a := range uniq(append(aliases, prev.Aliases...)) {
			resolved, err := hs.ResolveAlias(ctx, bot, a)
			switch {
			case err == nil && resolved == p.Room:
				got.Aliases = append(got.Aliases, a)
			case err != nil && !errors.Is(err, mautrix.MNotFound) && !errors.Is(err, mautrix.MForbidden):
				return err
			}
		}
		for _, s := range spaces {
			ok, err := spaceLists(ctx, r.db, hs, bot, p.ActAs, s, p.Room)
			if err != nil {
				return err
			}
			if ok {
				got.Spaces = append(got.Spaces, s)
			}
		}
		now := r.now().UnixMilli()
		err = r.db.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
			if _, err := r.db.Exec(ctx, tx, `DELETE FROM room_link WHERE room_id = $1`, p.Room); err != nil {
				return err
			}
			for kind, values := range map[string][]string{"alias": got.Aliases, "space": got.Spaces} {
				for _, v := range values {
					if _, err := r.db.Exec(ctx, tx, `INSERT INTO room_link (room_id, kind, value, verified_at) VALUES ($1, $2, $3, $4)`, p.Room, kind, v, now); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		links.set(p.Room, got)
		if enrol != nil {
			return enrol(ctx)
		}
		return nil
	})
}

// claimedLinks are the aliases and parent spaces a room's current state
// claims (singleton state under the empty key only; a parent link with
// empty content is removed).
func claimedLinks(state []json.RawMessage) (aliases, spaces []string) {
	for _, raw := range state {
		ev := gjson.ParseBytes(raw)
		key := ev.Get("state_key")
		c := ev.Get("content")
		switch ev.Get("type").String() {
		case "m.room.canonical_alias":
			if key.String() != "" {
				continue
			}
			if a := c.Get("alias").String(); a != "" {
				aliases = append(aliases, a)
			}
			for _, a := range c.Get("alt_aliases").Array() {
				if a.String() != "" {
					aliases = append(aliases, a.String())
				}
			}
		case "m.space.parent":
			if key.String() != "" && c.IsObject() && len(c.Get("via").Array()) > 0 {
				spaces = append(spaces, key.String())
			}
		}
	}
	return uniq(aliases), uniq(spaces)
}

// spaceLists reports whether space lists room in its current state (an
// m.space.child for it with a via list), read as a local member of the space:
// its creator if the service knows it, whoever triggered the check, or the bot.
func spaceLists(ctx context.Context, db *store.DB, hs LinkHomeserver, bot, actAs, space, room string) (bool, error) {
	creator, _, _, err := roomClaims(ctx, db, space)
	if err != nil {
		return false, err
	}
	content, err := FirstAllowed(LocalActors(bot, creator, actAs), func(u string) (map[string]any, error) {
		return hs.StateContent(ctx, u, space, "m.space.child", room)
	})
	if errors.Is(err, mautrix.MNotFound) || errors.Is(err, mautrix.MForbidden) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	via, _ := content["via"].([]any)
	return len(via) > 0, nil
}

// LocalActors are the users of the bot's server among users, in order,
// then the bot: the service can act only as local users.
func LocalActors(bot string, users ...string) []string {
	var out []string
	for _, u := range users {
		if u != "" && u != bot && SameServer(u, bot) && !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return append(out, bot)
}

// FirstAllowed tries each actor until one is not refused (403) or the
// answer is found missing; it returns the last refusal otherwise.
func FirstAllowed[T any](actors []string, f func(string) (T, error)) (T, error) {
	var zero T
	err := error(mautrix.MForbidden)
	for _, u := range actors {
		var v T
		v, err = f(u)
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, mautrix.MForbidden) {
			return zero, err
		}
	}
	return zero, err
}

func uniq(l []string) []string {
	var out []string
	for _, s := range l {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}
