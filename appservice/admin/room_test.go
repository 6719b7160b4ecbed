package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/bot"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/sessions"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

// fakeBot holds the management room's messages and records the replies.
type fakeBot struct {
	messages map[string]bot.Message
	noKeys   bool
	replies  map[string]string // txn ID → text: a resend with the same ID is one message
	sends    int
}

func (b *fakeBot) EnsureJoined(context.Context, string, string) (bot.Membership, error) {
	return bot.Membership{}, nil
}

func (b *fakeBot) ReadMessage(_ context.Context, _, eventID string) (bot.Message, error) {
	if b.noKeys {
		return bot.Message{}, bot.ErrNoKeys
	}
	return b.messages[eventID], nil
}

func (b *fakeBot) SendNotice(_ context.Context, _, _, target, text, txnID string) error {
	b.sends++
	b.replies[txnID] = target + ": " + text
	return nil
}

type fakeInventory []homeserver.Device

func (f fakeInventory) DeviceInventory(context.Context, string) ([]homeserver.Device, error) {
	return f, nil
}

func newRoom(t *testing.T, dbType string) (*Room, *fakeBot, *store.DB) {
	t.Helper()
	db, _ := storetest.Open(t, dbType)
	keys, err := audit.NewKeys(bytes.Repeat([]byte{9}, 32))
	if err != nil {
		t.Fatal(err)
	}
	b := &fakeBot{messages: map[string]bot.Message{}, replies: map[string]string{}}
	m := &Room{DB: db, Chain: audit.NewChain(keys, db, time.Now), Bot: b,
		HS:      fakeInventory{{ID: "PHONE", LastSeen: 1_700_000_000_000, HasKeys: true, CrossSigned: true}, {ID: "WEB"}},
		IsAdmin: func(u string) bool { return u == "@admin:hs" }, ManagementRoom: "!mgmt:hs"}
	return m, b, db
}

func command(t *testing.T, m *Room, b *fakeBot, eventID, sender, text string, attempts int) error {
	t.Helper()
	return commandAs(t, m, b, bot.Message{Sender: sender, Room: "!mgmt:hs", MsgType: "m.text", Body: text, Encrypted: true, Trust: id.TrustStateCrossSignedVerified},
		eventID, attempts)
}

// commandAs runs the job of a management-room message as the bot read it.
func commandAs(t *testing.T, m *Room, b *fakeBot, msg bot.Message, eventID string, attempts int) error {
	t.Helper()
	sender := msg.Sender
	b.messages[eventID] = msg
	payload, _ := json.Marshal(appservice.CommandPayload{Room: "!mgmt:hs", EventID: eventID, Sender: sender})
	return m.handleCommand(context.Background(), &appservice.Job{Kind: appservice.JobAdminCommand, Payload: payload, Attempts: attempts})
}

func trail(t *testing.T, db *store.DB) []audit.Record {
	t.Helper()
	stored, err := audit.ReadAfter(context.Background(), db, 0, 1_000_000)
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Record
	for _, s := range stored {
		r, err := s.Fields()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func commandRecords(t *testing.T, db *store.DB) []string {
	t.Helper()
	var out []string
	for _, r := range trail(t, db) {
		if r.Type == audit.TypeAdminCommand {
			out = append(out, r.Action+":"+r.Outcome)
		}
	}
	return out
}

// Every decision the management room makes: who may, what runs once, what
// is answered, and what the audit trail holds.
func TestManagementRoomHandler(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			m, b, db := newRoom(t, dbType)
			ctx := context.Background()
			count := func(q string) int {
				var n int
				if err := db.R.QueryRowContext(ctx, q).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			}
			// A non-admin's wipe: refused, told, audited; nothing queued.
			if err := command(t, m, b, "$1", "@eve:hs", "!wipe @bob:hs spite", 0); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(b.replies["cmd-$1"], "@eve:hs: you are not one of the administrators") || count(`SELECT COUNT(*) FROM wipe`) != 0 {
				t.Fatalf("refusal: %q, wipes %d", b.replies["cmd-$1"], count(`SELECT COUNT(*) FROM wipe`))
			}
			// Chat among admins is not a command: nothing said, nothing audited.
			if err := command(t, m, b, "$2", "@admin:hs", "morning all", 0); err != nil || b.replies["cmd-$2"] != "" {
				t.Fatalf("chat answered: %v %q", err, b.replies["cmd-$2"])
			}
			// The admin's wipe runs once however often its job runs.
			for i := 0; i < 3; i++ {
				if err := command(t, m, b, "$3", "@admin:hs", "!wipe @bob:hs --redact all lost phone", i); err != nil {
					t.Fatal(err)
				}
			}
			if n := count(`SELECT COUNT(*) FROM wipe`); n != 1 {
				t.Fatalf("%d wipes from one command", n)
			}
			if n := count(`SELECT COUNT(*) FROM job WHERE kind = 'admin_wipe_report'`); n != 1 {
				t.Fatalf("%d wipe reports queued", n)
			}
			if got := b.replies["cmd-$3"]; !strings.Contains(got, "wipe 1 of @bob:hs started (redact: all)") {
				t.Fatalf("wipe reply %q", got)
			}
			w, err := sessions.LoadWipe(ctx, db, 1)
			if err != nil || w.Reason != "lost phone" || w.Scope != "all" || w.RequestedBy != m.Chain.Keys().User("@admin:hs") {
				t.Fatalf("wipe %+v %v", w, err)
			}
			// Reads answer from the homeserver and the database.
			if err := command(t, m, b, "$4", "@admin:hs", "!devices @bob:hs", 0); err != nil {
				t.Fatal(err)
			}
			if got := b.replies["cmd-$4"]; !strings.Contains(got, "2 session(s)") || !strings.Contains(got, "PHONE — last seen 2023-11-14T22:13:20Z — cross-signed: yes") ||
				!strings.Contains(got, "WEB — last seen never — cross-signed: no keys") {
				t.Fatalf("devices reply %q", got)
			}
			if err := command(t, m, b, "$5", "@admin:hs", "!hold !ward:hs case 114", 0); err != nil || !strings.Contains(b.replies["cmd-$5"], "hold 1 placed on !ward:hs") {
				t.Fatalf("hold: %v %q", err, b.replies["cmd-$5"])
			}
			if err := command(t, m, b, "$6", "@admin:hs", "!holds", 0); err != nil || !strings.Contains(b.replies["cmd-$6"], "1 — !ward:hs") {
				t.Fatalf("holds: %v %q", err, b.replies["cmd-$6"])
			}
			if err := command(t, m, b, "$7", "@admin:hs", "!release 1", 0); err != nil || !strings.Contains(b.replies["cmd-$7"], "hold 1 released") {
				t.Fatalf("release: %v %q", err, b.replies["cmd-$7"])
			}
			// Mistakes are answered, not retried.
			if err := command(t, m, b, "$8", "@admin:hs", "!release 1", 0); err != nil || !strings.Contains(b.replies["cmd-$8"], "no standing hold 1") {
				t.Fatalf("second release: %v %q", err, b.replies["cmd-$8"])
			}
			if err := command(t, m, b, "$9", "@admin:hs", "!wipe @bob:hs --device PHONE stolen", 0); err != nil || !strings.Contains(b.replies["cmd-$9"], "cannot sign out a single device") {
				t.Fatalf("single device: %v %q", err, b.replies["cmd-$9"])
			}
			if err := command(t, m, b, "$10", "@admin:hs", "!wipe bob", 0); err != nil || !strings.Contains(b.replies["cmd-$10"], "not a user ID") {
				t.Fatalf("bad wipe: %v %q", err, b.replies["cmd-$10"])
			}
			// No room key yet: retried (an error) until patience runs out, then answered.
			b.noKeys = true
			if err := command(t, m, b, "$11", "@admin:hs", "!holds", 0); err == nil {
				t.Fatal("a message without its key was taken as read")
			}
			if err := command(t, m, b, "$11", "@admin:hs", "!holds", keysAttempts-1); err != nil || !strings.Contains(b.replies["cmd-$11"], "could not read that message") {
				t.Fatalf("unreadable: %v %q", err, b.replies["cmd-$11"])
			}
			b.noKeys = false

			want := "wipe:denied,wipe:success,devices:success,hold:success,holds:success,release:success,release:failure,wipe:failure,wipe:failure,unreadable:failure"
			if got := strings.Join(commandRecords(t, db), ","); got != want {
				t.Fatalf("admin.command records\n got %s\nwant %s", got, want)
			}
			// The wipe's report waits for the wipe, then says how it went.
			rp, _ := json.Marshal(reportPayload{WipeID: 1, Room: "!mgmt:hs", Admin: "@admin:hs"})
			job := &appservice.Job{Kind: JobWipeReport, Payload: rp}
			if err := m.handleReport(ctx, job); err == nil {
				t.Fatal("reported a wipe still at its first step")
			}
			if _, err := db.W.ExecContext(ctx, `UPDATE wipe SET state = 'done', revoked = 3, redacted = 120, confirmed_at = 1795000000000 WHERE id = 1`); err != nil {
				t.Fatal(err)
			}
			if err := m.handleReport(ctx, job); err != nil {
				t.Fatal(err)
			}
			if got := b.replies["wipe-report-1"]; got != "@admin:hs: wipe 1 of @bob:hs done. Sessions revoked: 3, messages redacted: 120, confirmed at 2026-11-18T11:06:40Z." {
				t.Fatalf("report %q", got)
			}
			// The trail has who and what, never the reasons.
			raw, _ := json.Marshal(trail(t, db))
			for _, s := range []string{"spite", "lost phone", "case 114", "@admin:hs", "@bob:hs", "@eve:hs"} {
				if bytes.Contains(raw, []byte(s)) {
					t.Fatalf("%q in the audit trail", s)
				}
			}
		})
	}
}

// The roster from the management room: verify, whois, the list, revoke;
// each change once, each audited, mistakes answered.
func TestManagementRoomRoster(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			m, b, db := newRoom(t, dbType)
			steps := []struct{ id, text, want string }{
				{"$1", "!whois @rn:hs", "@rn:hs is not on the verified clinician roster."},
				{"$2", "!verify @rn:hs 1003000126 nurse --department ICU --licence-expires 2099-06-30", "@rn:hs is now a verified nurse."},
				{"$3", "!whois @rn:hs", "@rn:hs: nurse, ICU; NPI 1003000126; verified by admin @admin:hs on "},
				{"$4", "!verify @doc:hs 1003000127 physician", "fails its check digit"},
				{"$5", "!roster", "1 verified clinician(s) (1 entries):\n@rn:hs — nurse (ICU)"},
				{"$6", "!revoke @rn:hs licence suspended", "@rn:hs is no longer verified"},
				{"$7", "!whois @rn:hs", "REVOKED on "},
				{"$8", "!revoke @rn:hs again", "@rn:hs is not a verified clinician"},
				{"$9", "!roster", "0 verified clinician(s) (1 entries):\n@rn:hs — nurse (ICU) — revoked"},
			}
			for _, s := range steps {
				if err := command(t, m, b, s.id, "@admin:hs", s.text, 0); err != nil {
					t.Fatalf("%s: %v", s.text, err)
				}
				if got := b.replies["cmd-"+s.id]; !strings.Contains(got, s.want) {
					t.Fatalf("%s: replied %q, want %q", s.text, got, s.want)
				}
			}
			// Re-running the verify job does not verify twice.
			if err := command(t, m, b, "$2", "@admin:hs", "!verify @rn:hs 1003000126 nurse", 1); err != nil {
				t.Fatal(err)
			}
			var roster []string
			for _, r := range trail(t, db) {
				if r.Type == audit.TypeRoster {
					roster = append(roster, r.Action)
				}
			}
			if strings.Join(roster, ",") != "verify,revoke" {
				t.Fatalf("roster records %v", roster)
			}
			if got := strings.Join(commandRecords(t, db), ","); got != "whois:success,verify:success,whois:success,verify:failure,roster:success,revoke:success,whois:success,revoke:failure,roster:success" {
				t.Fatalf("admin.command records %s", got)
			}
		})
	}
}

// Commands that change something need more than the homeserver's word that
// an admin sent them: whoever holds an admin's access token (or runs the
// homeserver) can send as them, but cannot make a device cross-signed by the
// master key the bot pinned. Each attack is refused, answered and audited
// denied, and changes nothing; reads stay open to any admin session.
func TestRedTeamManagementRoomTrustsMoreThanTheHomeserver(t *testing.T) {
	verified := bot.Message{Sender: "@admin:hs", Room: "!mgmt:hs", MsgType: "m.text", Encrypted: true, Trust: id.TrustStateCrossSignedVerified}
	cases := []struct {
		name   string
		change func(*bot.Message)
		text   string
		reply  string // "" : runs
		detail string
	}{
		{"plaintext wipe", func(m *bot.Message) { m.Encrypted, m.Trust = false, id.TrustStateUnset }, "!wipe @bob:hs spite", "sent in plain text", "not-encrypted"},
		{"uncross-signed device verifies", func(m *bot.Message) { m.Trust = id.TrustStateUnknownDevice }, "!verify @x:hs 1003000126 nurse", "not verified (cross-signed)", "device-not-cross-signed"},
		{"trust on first use is not enough", func(m *bot.Message) { m.Trust = id.TrustStateCrossSignedTOFU }, "!revoke @x:hs spite", "not verified (cross-signed)", "device-not-cross-signed"},
		{"forwarded room key", func(m *bot.Message) { m.Trust = id.TrustStateForwarded }, "!release 1", "not verified (cross-signed)", "device-not-cross-signed"},
		{"reset cross-signing", func(m *bot.Message) { m.KeyChanged, m.Trust = true, id.TrustStateCrossSignedUntrusted }, "!offboard @bob:hs spite", "not the one I pinned", "key-changed"},
		{"hold from an unverified session", func(m *bot.Message) { m.Trust = id.TrustStateCrossSignedUntrusted }, "!hold !ward:hs case", "not verified (cross-signed)", "device-not-cross-signed"},
		{"reads stay open", func(m *bot.Message) { m.Encrypted, m.Trust = false, id.TrustStateUnset }, "!holds", "", ""},
		{"verified device", func(*bot.Message) {}, "!wipe @bob:hs lost phone", "", ""},
	}
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			m, b, db := newRoom(t, dbType)
			for i, c := range cases {
				msg := verified
				msg.Body = c.text
				c.change(&msg)
				ev := fmt.Sprintf("$%d", i)
				if err := commandAs(t, m, b, msg, ev, 0); err != nil {
					t.Fatalf("%s: %v", c.name, err)
				}
				got := b.replies["cmd-"+ev]
				if c.reply != "" && !strings.Contains(got, c.reply) || c.reply == "" && strings.Contains(got, "refused") {
					t.Fatalf("%s: replied %q", c.name, got)
				}
				last := trail(t, db)
				r := last[len(last)-1]
				if c.reply != "" && (r.Outcome != audit.OutcomeDenied || r.Detail != c.detail) || c.reply == "" && r.Outcome != audit.OutcomeSuccess {
					t.Fatalf("%s: audited %s/%s", c.name, r.Outcome, r.Detail)
				}
			}
			var n int
			db.R.QueryRow(`SELECT COUNT(*) FROM wipe`).Scan(&n)
			if n != 1 {
				t.Fatalf("%d wipes; only the verified device's should run", n)
			}
		})
	}
}

// A job a database writer made up (another room, another sender than the
// event's) runs nothing and is audited as forged.
func TestRedTeamForgedCommandJob(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			m, b, db := newRoom(t, dbType)
			ctx := context.Background()
			for i, c := range []struct{ jobRoom, jobSender, evRoom, evSender string }{
				{"!other:hs", "@admin:hs", "!other:hs", "@admin:hs"}, // not admin.room
				{"!mgmt:hs", "@admin:hs", "!mgmt:hs", "@eve:hs"},     // the event is someone else's
				{"!mgmt:hs", "@admin:hs", "!other:hs", "@admin:hs"},  // the event is from another room
			} {
				ev := fmt.Sprintf("$f%d", i)
				b.messages[ev] = bot.Message{Sender: c.evSender, Room: c.evRoom, Body: "!wipe @bob:hs x", Encrypted: true, Trust: id.TrustStateCrossSignedVerified}
				payload, _ := json.Marshal(appservice.CommandPayload{Room: c.jobRoom, EventID: ev, Sender: c.jobSender})
				err := m.handleCommand(ctx, &appservice.Job{Kind: appservice.JobAdminCommand, Payload: payload})
				if !appservice.IsPermanent(err) {
					t.Fatalf("case %d: %v, want a permanent refusal", i, err)
				}
			}
			var n int
			db.R.QueryRow(`SELECT COUNT(*) FROM wipe`).Scan(&n)
			if got := strings.Join(commandRecords(t, db), ","); n != 0 || got != "forged:denied,forged:denied,forged:denied" {
				t.Fatalf("wipes %d, records %s", n, got)
			}
		})
	}
}
