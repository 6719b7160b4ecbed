package appservice

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

// fakeLinkHS answers as a homeserver would: the room's state, the
// directory, and spaces' m.space.child state (readable by their members).
type fakeLinkHS struct {
	state     map[string][]json.RawMessage   // room → state events
	directory map[string]string              // alias → room
	children  map[string]map[string][]string // space → child → via
	members   map[string]map[string]bool     // room → members
}

func (f *fakeLinkHS) RoomState(ctx context.Context, user, room string) ([]json.RawMessage, error) {
	if !f.members[room][user] {
		return nil, mautrix.MForbidden
	}
	return f.state[room], nil
}

func (f *fakeLinkHS) StateContent(ctx context.Context, user, room, eventType, key string) (map[string]any, error) {
	if !f.members[room][user] {
		return nil, mautrix.MForbidden
	}
	via, ok := f.children[room][key]
	if !ok {
		return nil, mautrix.MNotFound
	}
	vs := make([]any, len(via))
	for i, v := range via {
		vs[i] = v
	}
	return map[string]any{"via": vs}, nil
}

func (f *fakeLinkHS) ResolveAlias(ctx context.Context, user, alias string) (string, error) {
	if r, ok := f.directory[alias]; ok {
		return r, nil
	}
	return "", mautrix.MNotFound
}

func rawState(typ, key string, content string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"type":%q,"state_key":%q,"content":%s}`, typ, key, content))
}

// A room admin claims aliases and parent spaces; only what the directory
// and the spaces themselves confirm is kept, and a later check drops what
// stopped being true.
func TestHostileClaimedLinksAreVerified(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			ctx := context.Background()
			room := "!r:h"
			hs := &fakeLinkHS{
				state: map[string][]json.RawMessage{room: {
					rawState("m.room.canonical_alias", "", `{"alias":"#icu-1:h","alt_aliases":["#cafe:h","#nowhere:h"]}`),
					rawState("m.room.canonical_alias", "odd", `{"alias":"#odd:h"}`),
					rawState("m.space.parent", "!listing:h", `{"via":["h"]}`),
					rawState("m.space.parent", "!silent:h", `{"via":["h"]}`),
					rawState("m.space.parent", "!vialess:h", `{"via":["h"]}`),
					rawState("m.space.parent", "!removed:h", `{}`),
				}},
				directory: map[string]string{"#icu-1:h": room, "#cafe:h": "!other:h", "#odd:h": room},
				children: map[string]map[string][]string{
					"!listing:h": {room: {"h"}}, "!silent:h": {}, "!vialess:h": {room: {}}, "!removed:h": {room: {"h"}},
				},
				members: map[string]map[string]bool{
					room: {"@mallory:h": true}, "!listing:h": {"@hipaa:h": true}, "!silent:h": {"@hipaa:h": true}, "!vialess:h": {"@hipaa:h": true},
				},
			}
			links := &Links{m: map[string]RoomLinks{}}
			enrolled := 0
			RegisterLinkVerification(p.runner, hs, links, "@hipaa:h", func(context.Context) error { enrolled++; return nil })
			ev := &Event{ID: "$p", RoomID: room, Type: "m.space.parent", Sender: "@mallory:h", StateKey: new(string)}
			*ev.StateKey = "!listing:h"
			job, ok := linkJob(ev, nil)
			if !ok {
				t.Fatal("a parent link queued no check")
			}
			p.enqueue(t, job)
			p.runDue(t)
			got := links.Of(room)
			if fmt.Sprint(got.Aliases) != "[#icu-1:h]" || fmt.Sprint(got.Spaces) != "[!listing:h]" || enrolled != 1 {
				t.Fatalf("confirmed %+v (enrolment ran %d times), want only #icu-1:h and !listing:h", got, enrolled)
			}
			if n := p.count(t, `SELECT COUNT(*) FROM room_link WHERE room_id = $1`, room); n != 2 {
				t.Fatalf("%d rows in room_link", n)
			}
			// The space stops listing the room (its m.space.child is
			// removed): the check its change queues drops the link. The
			// alias, dropped from the room's state but still in the
			// directory, stays confirmed.
			delete(hs.children["!listing:h"], room)
			hs.state[room] = hs.state[room][2:]
			child := &Event{ID: "$c", RoomID: "!listing:h", Type: "m.space.child", Sender: "@alice:h", StateKey: &room}
			job, _ = linkJob(child, nil)
			p.enqueue(t, job)
			p.runDue(t)
			got = links.Of(room)
			if fmt.Sprint(got.Aliases) != "[#icu-1:h]" || len(got.Spaces) != 0 {
				t.Fatalf("after the space dropped the room: %+v", got)
			}
			fresh, _ := loadRoomLinks(ctx, p.db)
			if fmt.Sprint(fresh[room]) != fmt.Sprint(got) {
				t.Fatalf("stored %+v, in memory %+v", fresh[room], got)
			}
		})
	}
}
