package identity

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/bot"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/testkit"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
	"github.com/matrix-hipaa/matrix-hipaa/policy/roster"
)

// fakeDMBot is the bot as people's DMs see it: what it said where, who it
// removed, and the messages people wrote (by event ID), already decrypted.
type fakeDMBot struct {
	fakeDM
	mu       sync.Mutex
	messages map[string]bot.Message
	kicks    []string
	invites  []string
}

func (f *fakeDMBot) ReadMessage(_ context.Context, room, eventID string) (bot.Message, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.messages[eventID], nil
}

func (f *fakeDMBot) Kick(_ context.Context, room, user, reason string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kicks = append(f.kicks, room+">"+user)
	return nil
}

// glassHS is the homeserver as emergency access uses it: invites are
// noted on the bot; the rooms' creator has no power to remove anyone, so
// the bot does.
type glassHS struct{ f *fakeDMBot }

func (h glassHS) Kick(_ context.Context, actAs, room, user, reason string) error {
	return errors.New("M_FORBIDDEN")
}

func (h glassHS) Invite(_ context.Context, _, room, invitee string) error {
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	h.f.invites = append(h.f.invites, room+">"+invitee)
	return nil
}

func (h glassHS) ResolveAlias(_ context.Context, _, alias string) (string, error) {
	return "!icu:hs", nil
}

func (f *fakeDMBot) said(room string) []string {
	f.fakeDM.mu.Lock()
	defer f.fakeDM.mu.Unlock()
	var out []string
	for _, n := range f.notices {
		if r, text, _ := strings.Cut(n, ">"); r == room {
			out = append(out, text)
		}
	}
	return out
}

const glassPolicy = `version: 1
training: on
training_interval: 720h
defaults:
  members: verified
  roles: [physician]
  break_glass: allow
  break_glass_max: 30m
rooms:
  - room_id: "!lobby:hs"
    members: any
  - room_id: "!psych:hs"
    break_glass: deny
`

type glassRig struct {
	p   *apptest.Pipeline
	f   *Feature
	bot *fakeDMBot
	t   *testing.T
}

func newGlassRig(t *testing.T, dbType string) *glassRig {
	p := apptest.New(t, dbType)
	p.UsePolicy(t, glassPolicy)
	env := p.Env()
	env.Config.Homeserver.Domain = "hs"
	env.Config.Compliance.PrivacyOfficerRoom = "!officer:hs"
	f := New(env)
	b := &fakeDMBot{messages: map[string]bot.Message{}}
	f.UseBot(b, glassHS{b})
	p.Add(t, f)
	f.Start(context.Background())
	verifyClinicians(t, p,
		roster.Clinician{UserID: "@doc:hs", NPI: "1234567893", Role: "physician", VerifiedBy: "x"},
		roster.Clinician{UserID: "@nurse:hs", NPI: "1003000126", Role: "nurse", VerifiedBy: "x"},
	)
	r := &glassRig{p: p, f: f, bot: b, t: t}
	for _, room := range []string{"!icu:hs", "!lobby:hs", "!psych:hs"} {
		r.push(testkit.State("$c"+room, room, "@doc:hs", "m.room.create", "", map[string]any{"creator": "@doc:hs"}),
			testkit.State("$e"+room, room, "@doc:hs", "m.room.encryption", "", map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}))
	}
	return r
}

// push delivers events and runs what they lead to.
func (r *glassRig) push(evs ...map[string]any) {
	r.t.Helper()
	if code := r.p.Put(r.t, "txn-"+evs[0]["event_id"].(string), evs...); code != 200 {
		r.t.Fatal(code)
	}
	r.p.Dispatch(r.t)
	for r.p.RunDue(r.t) > 0 {
	}
}

// write is user writing text to the bot (encrypted, as clients do).
func (r *glassRig) write(user, id, text string) {
	r.t.Helper()
	room := "!dm-" + user
	r.bot.mu.Lock()
	r.bot.messages[id] = bot.Message{Sender: user, Room: room, Type: "m.room.message", MsgType: "m.text", Body: text, Encrypted: true}
	r.bot.mu.Unlock()
	r.push(map[string]any{"event_id": id, "room_id": room, "sender": user, "type": "m.room.encrypted", "origin_server_ts": 1, "content": map[string]any{}})
}

func (r *glassRig) records(typ string) []string {
	var out []string
	for _, rec := range r.p.Records(r.t) {
		if rec["type"] == typ {
			out = append(out, rec["action"].(string)+"/"+str(rec["detail"])+"/"+str(rec["count"]))
		}
	}
	return out
}

func str(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case float64:
		return strconv.FormatInt(int64(x), 10)
	}
	return v.(string)
}

// Onboarding: the first join of a local person to a room under policy
// sends them the rules in an encrypted DM; a reply acknowledges them (on
// the record); another join within training_interval sends nothing, one
// after it sends them again, and a reaction acknowledges that.
func TestTrainingOnFirstJoinAndAfterTheInterval(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			r := newGlassRig(t, dbType)
			r.push(testkit.Member("$j1", "!lobby:hs", "@nurse:hs", "@nurse:hs", "join"),
				testkit.Member("$j2", "!lobby:hs", "@visitor:other.org", "@visitor:other.org", "join"))
			said := r.bot.said("!dm-@nurse:hs")
			if len(said) != 1 || !strings.Contains(said[0], "end-to-end encrypted") || !strings.Contains(said[0], "acknowledge") {
				t.Fatalf("the DM: %q", said)
			}
			if r.bot.said("!dm-@visitor:other.org") != nil || r.bot.rooms != 1 {
				t.Fatalf("another server's user was sent the rules")
			}
			if got := strings.Join(r.records("training"), " "); got != "sent//" {
				t.Fatalf("training records %q", got)
			}
			c, _ := ReadTrainingCounts(context.Background(), r.p.DB)
			if c != (TrainingCounts{Sent: 1, Unacknowledged: 1}) {
				t.Fatalf("counts %+v", c)
			}
			r.write("@nurse:hs", "$ack1", "read, thanks")
			if got := strings.Join(r.records("training"), " "); got != "sent// acknowledged//" {
				t.Fatalf("training records %q", got)
			}
			if said := r.bot.said("!dm-@nurse:hs"); len(said) != 2 || !strings.Contains(said[1], "recorded") {
				t.Fatalf("the DM: %q", said)
			}
			// Within the interval: nothing more.
			r.p.Clock.Advance(29 * 24 * time.Hour)
			r.push(testkit.Member("$l1", "!lobby:hs", "@nurse:hs", "@nurse:hs", "leave"), testkit.Member("$j3", "!lobby:hs", "@nurse:hs", "@nurse:hs", "join"))
			if said := r.bot.said("!dm-@nurse:hs"); len(said) != 2 {
				t.Fatalf("sent again within the interval: %q", said)
			}
			// After it: sent again, and a reaction acknowledges it.
			r.p.Clock.Advance(2 * 24 * time.Hour)
			r.push(testkit.Member("$l2", "!lobby:hs", "@nurse:hs", "@nurse:hs", "leave"), testkit.Member("$j4", "!lobby:hs", "@nurse:hs", "@nurse:hs", "join"))
			if said := r.bot.said("!dm-@nurse:hs"); len(said) != 3 || r.bot.rooms != 1 {
				t.Fatalf("not sent again after the interval (or a second DM made): %q", said)
			}
			// Someone else writing in her DM is not her acknowledging.
			r.bot.mu.Lock()
			r.bot.messages["$other"] = bot.Message{Sender: "@doc:hs", Room: "!dm-@nurse:hs", Type: "m.room.message", Body: "ok"}
			r.bot.mu.Unlock()
			r.push(map[string]any{"event_id": "$other", "room_id": "!dm-@nurse:hs", "sender": "@doc:hs", "type": "m.room.encrypted", "origin_server_ts": 2, "content": map[string]any{}})
			if got := strings.Join(r.records("training"), " "); got != "sent// acknowledged// sent//" {
				t.Fatalf("training records after another's message %q", got)
			}
			r.bot.mu.Lock()
			r.bot.messages["$react"] = bot.Message{Sender: "@nurse:hs", Room: "!dm-@nurse:hs", Type: "m.reaction"}
			r.bot.mu.Unlock()
			r.push(map[string]any{"event_id": "$react", "room_id": "!dm-@nurse:hs", "sender": "@nurse:hs", "type": "m.reaction", "origin_server_ts": 2,
				"content": map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": "$x", "key": "👍"}}})
			if got := strings.Join(r.records("training"), " "); got != "sent// acknowledged// sent// acknowledged//" {
				t.Fatalf("training records %q", got)
			}
			if c, _ := ReadTrainingCounts(context.Background(), r.p.DB); c != (TrainingCounts{Sent: 1, Acknowledged: 1}) {
				t.Fatalf("counts %+v", c)
			}
		})
	}
}

// Break the glass: a verified nurse outside the ICU's roles asks; she is
// let in at once, the room and the privacy officer are told, her messages
// there are counted (not read), and she is removed when the window ends.
// An unverified person, a room whose policy denies it, and a room she may
// already enter are refused, on the record.
func TestBreakGlass(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			r := newGlassRig(t, dbType)
			// Her DM with the bot exists once she has been sent the rules.
			r.push(testkit.Member("$j1", "!lobby:hs", "@nurse:hs", "@nurse:hs", "join"),
				testkit.Member("$v1", "!lobby:hs", "@visitor:hs", "@visitor:hs", "join"))
			r.write("@nurse:hs", "$bg1", "!breakglass !icu:hs patient in bed 4 is coding and the physician is not answering")
			if r.bot.invites == nil || r.bot.invites[0] != "!icu:hs>@nurse:hs" {
				t.Fatalf("not invited: %q", r.bot.invites)
			}
			if a := r.bot.said("!icu:hs"); len(a) != 1 || !strings.Contains(a[0], "EMERGENCY ACCESS: @nurse:hs (verified nurse") {
				t.Fatalf("the room was told %q", a)
			}
			if o := r.bot.said("!officer:hs"); len(o) != 1 || !strings.Contains(o[0], "@nurse:hs") || !strings.Contains(o[0], "!icu:hs") ||
				!strings.Contains(o[0], "patient in bed 4 is coding") {
				t.Fatalf("the privacy officer was told %q", o)
			}
			if d := r.bot.said("!dm-@nurse:hs"); !strings.Contains(d[len(d)-1], "Emergency access granted") {
				t.Fatalf("she was told %q", d)
			}
			// She joins: admitted; two messages and a state change counted.
			r.push(testkit.Member("$jicu", "!icu:hs", "@nurse:hs", "@nurse:hs", "join"))
			if len(r.bot.kicks) != 0 {
				t.Fatalf("kicked on joining: %q", r.bot.kicks)
			}
			for _, id := range []string{"$m1", "$m2"} {
				r.push(map[string]any{"event_id": id, "room_id": "!icu:hs", "sender": "@nurse:hs", "type": "m.room.encrypted", "origin_server_ts": 3, "content": map[string]any{}})
			}
			r.push(map[string]any{"event_id": "$m3", "room_id": "!icu:hs", "sender": "@doc:hs", "type": "m.room.encrypted", "origin_server_ts": 3, "content": map[string]any{}})
			// A sweep leaves her in while the window is open.
			if n, err := r.f.members.Sweep(context.Background()); err != nil || n != 0 {
				t.Fatalf("sweep queued %d, %v", n, err)
			}
			r.p.Clock.Advance(31 * time.Minute)
			for r.p.RunDue(t) > 0 {
			}
			if len(r.bot.kicks) != 1 || r.bot.kicks[0] != "!icu:hs>@nurse:hs" {
				t.Fatalf("not removed at the end: %q", r.bot.kicks)
			}
			if o := r.bot.said("!officer:hs"); len(o) != 2 || !strings.Contains(o[1], "2 messages") {
				t.Fatalf("the privacy officer was told %q", o)
			}
			// Refused: not verified; policy denies; already allowed (the lobby
			// is not limited); unknown room.
			r.write("@visitor:hs", "$bg2", "!breakglass !icu:hs let me in")
			r.write("@nurse:hs", "$bg3", "!breakglass !psych:hs urgent")
			r.write("@nurse:hs", "$bg4", "!breakglass !lobby:hs urgent")
			r.write("@nurse:hs", "$bg5", "!breakglass !nowhere:hs urgent")
			r.write("@nurse:hs", "$bg6", "!breakglass !icu:hs")
			got := strings.Join(r.records("emergency_access"), " ")
			want := "granted//1800 ended//2 refused/not_verified/ refused/denied_by_policy/ refused/not_gated/ refused/unknown_room/"
			if got != want {
				t.Fatalf("emergency_access records\n%s\nwant\n%s", got, want)
			}
			if m := strings.Join(r.records("membership"), " "); m != "admit/break_glass/" {
				t.Fatalf("membership records %q", m)
			}
			for _, rec := range r.p.Records(t) {
				if strings.Contains(str(rec["detail"]), "coding") {
					t.Fatalf("the reason is in the audit trail: %v", rec)
				}
			}
		})
	}
}

var _ appservice.Feature = (*Feature)(nil)

// The rules a person is sent say what applies in the room they joined,
// and only that; the hospital's own text replaces the composed one.
func TestRulesText(t *testing.T) {
	parse := func(y string) *policy.Policy {
		p, err := policy.Parse("p.yaml", []byte(y))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name, policy string
		has, hasNot  []string
	}{
		{"built in", "version: 1\n", []string{"end-to-end encrypted", "Please acknowledge"}, []string{"removed 3 days", "archived", "page", "verified clinicians"}},
		{"lifetime", "version: 1\ndefaults:\n  retention: 72h\n", []string{"removed 3 days after they are sent"}, nil},
		{"hours", "version: 1\ndefaults:\n  retention: 12h\n", []string{"removed 12 hours after"}, nil},
		{"archive and pages", "version: 1\ndefaults:\n  archive: on\n  page: [\"role:icu\"]\n", []string{"archived for the hospital's records", "never its text"}, nil},
		{"verified", "version: 1\ndefaults:\n  members: verified\n", []string{"Only verified clinicians", "!breakglass"}, nil},
		{"not encrypted", "version: 1\ndefaults:\n  encryption: optional\n  plaintext: allow\n", nil, []string{"end-to-end encrypted"}},
		{"the hospital's text", "version: 1\ntraining_text: \"Follow policy HIM-12.\"\n", []string{"Follow policy HIM-12.", "Please acknowledge"}, []string{"end-to-end encrypted"}},
	}
	for _, c := range cases {
		p := parse(c.policy)
		text := Rules(p, p.For(policy.Room{ID: "!r:hs"}))
		for _, h := range c.has {
			if !strings.Contains(text, h) {
				t.Errorf("%s: no %q in\n%s", c.name, h, text)
			}
		}
		for _, h := range c.hasNot {
			if strings.Contains(text, h) {
				t.Errorf("%s: %q in\n%s", c.name, h, text)
			}
		}
	}
}

// A DM room the bot opens for a session warning, before any rules were
// sent, is read like the rules' one: what its person writes there is
// answered at once, without a restart to load it.
func TestWarningDMIsRead(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			r := newGlassRig(t, dbType)
			hs := &fakeTrustHS{devices: map[string][]homeserver.Device{"@nurse:hs": {{ID: "PHONE", HasKeys: true}}}}
			pol := &policy.Policy{UnverifiedSessions: policy.UnverifiedWarn}
			r.p.Handle(deviceJobs(r.p.Env(), hs, r.f.messenger(), func() *policy.Policy { return pol }, appservice.WipeCaps{}))
			r.p.Enqueue(t, appservice.JobSpec{Kind: JobDeviceWarn, DedupeKey: "warn-PHONE", Payload: []byte(`{"user":"@nurse:hs","device":"PHONE"}`)})
			for r.p.RunDue(t) > 0 {
			}
			if d := r.bot.said("!dm-@nurse:hs"); len(d) != 1 || !strings.Contains(d[0], "your session PHONE is not verified") {
				t.Fatalf("the warning: %q", d)
			}
			r.write("@nurse:hs", "$bg1", "!breakglass !psych:hs urgent")
			if d := r.bot.said("!dm-@nurse:hs"); len(d) != 2 || !strings.Contains(d[1], "Policy does not allow emergency access") {
				t.Fatalf("her command in the warning's DM was not answered: %q", d)
			}
			if got := strings.Join(r.records("emergency_access"), " "); got != "refused/denied_by_policy/" {
				t.Fatalf("emergency_access records %q", got)
			}
		})
	}
}
