package archive

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/expiry"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

const room = "!ward:h"

func newArchive(t testing.TB, dbType, pol string) (*apptest.Pipeline, *Feature) {
	t.Helper()
	p := apptest.New(t, dbType)
	p.UsePolicy(t, pol)
	env := p.Env()
	env.Config.Keys.ArchiveFile = filepath.Join(t.TempDir(), "archive.key")
	env.Config.AppService.Bot = "hipaa"
	env.Config.Homeserver.Domain = "h"
	f, err := New(env)
	if err != nil {
		t.Fatal(err)
	}
	p.Add(t, f)
	return p, f
}

func member(id, user, membership string, ts int64) map[string]any {
	return map[string]any{"event_id": id, "room_id": room, "type": "m.room.member", "sender": user, "state_key": user,
		"origin_server_ts": ts, "content": map[string]any{"membership": membership, "displayname": "Dr " + user}}
}

// imageMsg is ann's plain image message with its file on this server.
func imageMsg(id string, ts int64) map[string]any {
	return map[string]any{"event_id": id, "room_id": room, "type": "m.room.message", "sender": "@ann:h", "origin_server_ts": ts,
		"content": map[string]any{"msgtype": "m.image", "body": "scan.png", "url": "mxc://h/plainfile"}}
}

func text(id, sender, body string, ts int64) map[string]any {
	return map[string]any{"event_id": id, "room_id": room, "type": "m.room.message", "sender": sender, "origin_server_ts": ts,
		"content": map[string]any{"msgtype": "m.text", "body": body}}
}

// What archived rooms say in the clear is kept at once, sealed: memberships
// (without display names), plaintext messages, redactions (the service's
// own marked as such); an encrypted message's ciphertext waits for its
// job. Rooms not archived keep nothing. The export ties them together.
func TestArchiveKeepsWhatRoomsSay(t *testing.T) {
	eachDB(t, func(t *testing.T, dbType string) {
		p, f := newArchive(t, dbType, "version: 1\ndefaults:\n  archive: off\nrooms:\n  - room_id: \"!ward:h\"\n    archive: on\n    archive_retention: 30d\n")
		base := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC).UnixMilli()
		p.Put(t, "t1",
			map[string]any{"event_id": "$create", "room_id": room, "type": "m.room.create", "sender": "@ann:h", "state_key": "", "origin_server_ts": base, "content": map[string]any{}},
			member("$m1", "@ann:h", "join", base+1),
			member("$m2", "@bo:h", "join", base+2),
			text("$t1", "@ann:h", "CANARY plain: bed 4", base+10),
			map[string]any{"event_id": "$enc", "room_id": room, "type": "m.room.encrypted", "sender": "@bo:h", "origin_server_ts": base + 20,
				"content": map[string]any{"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEjD", "session_id": "s1", "sender_key": "k", "device_id": "D"}},
			member("$m3", "@bo:h", "leave", base+25),
			map[string]any{"event_id": "$r1", "room_id": room, "type": "m.room.redaction", "sender": "@ann:h", "redacts": "$t1", "origin_server_ts": base + 30,
				"content": map[string]any{"reason": "CANARY wrong patient"}},
			map[string]any{"event_id": "$r2", "room_id": room, "type": "m.room.redaction", "sender": "@hipaa:h", "origin_server_ts": base + 40,
				"content": map[string]any{"redacts": "$enc", "reason": "expired"}},
			map[string]any{"event_id": "$other", "room_id": "!cafe:h", "type": "m.room.message", "sender": "@ann:h", "origin_server_ts": base + 50,
				"content": map[string]any{"msgtype": "m.text", "body": "lunch?"}},
		)
		p.Dispatch(t)
		for kind, want := range map[string]int{"member": 3, "message": 1, "redaction": 2} {
			if n := p.Count(t, `SELECT COUNT(*) FROM archive_item WHERE kind = $1`, kind); n != want {
				t.Errorf("%s items: %d, want %d", kind, n, want)
			}
		}
		if n := p.Count(t, `SELECT COUNT(*) FROM archive_pending WHERE event_id = '$enc' AND room_id = $1 AND sender = '@bo:h' AND event LIKE '%AwgAEjD%'`, room); n != 1 {
			t.Errorf("the ciphertext is not queued for the archiver (%d)", n)
		}
		if n := p.Count(t, `SELECT COUNT(*) FROM archive_item WHERE keep_until = sent_at + $1`, (30*24*time.Hour).Milliseconds()) +
			p.Count(t, `SELECT COUNT(*) FROM archive_pending WHERE keep_until = sent_at + $1`, (30*24*time.Hour).Milliseconds()); n != 7 {
			t.Errorf("items kept until sent + archive_retention: %d of 7", n)
		}
		if st, _ := p.JobState(t, "archive_notice:"+room); st != "pending" {
			t.Errorf("the archive notice job is %q", st)
		}
		// Nothing in the database shows what people wrote or call themselves.
		raw := dump(t, p)
		for _, c := range []string{"CANARY", "bed 4", "Dr @", "wrong patient"} {
			if bytes.Contains(raw, []byte(c)) {
				t.Errorf("the database holds %q in the clear", c)
			}
		}

		out := filepath.Join(t.TempDir(), "pkg")
		ring, err := f.Ring()
		if err != nil {
			t.Fatal(err)
		}
		m, err := Export(context.Background(), p.DB, p.Chain, ring, Query{Room: room, Reason: "audit", By: "os:test"}, out)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(filepath.Join(out, "messages.jsonl"))
		var lines []Line
		for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			var x Line
			if err := json.Unmarshal([]byte(l), &x); err != nil {
				t.Fatal(err)
			}
			lines = append(lines, x)
		}
		if len(lines) != 3 || m.Counts["messages"] != 1 || m.Counts["redactions"] != 2 {
			t.Fatalf("export: %d lines, counts %v:\n%s", len(lines), m.Counts, data)
		}
		if l := lines[0]; l.Body != "CANARY plain: bed 4" || l.Encrypted || l.RedactedBy != "$r1" || strings.Join(l.Members, ",") != "@ann:h,@bo:h" {
			t.Errorf("the plaintext message: %+v", l)
		}
		if l := lines[1]; l.Kind != "redaction" || l.Redacts != "$t1" || l.Reason != "CANARY wrong patient" || l.ByService {
			t.Errorf("ann's redaction: %+v", l)
		}
		if l := lines[2]; l.Kind != "redaction" || l.Redacts != "$enc" || !l.ByService || strings.Join(l.Members, ",") != "@ann:h" {
			t.Errorf("the service's redaction, after bo left: %+v", l)
		}
	})
}

func eachDB(t *testing.T, f func(*testing.T, string)) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) { f(t, dbType) })
	}
}

// dump is every table's text, for checking nothing is kept in the clear.
func dump(t *testing.T, p *apptest.Pipeline) []byte {
	t.Helper()
	var out bytes.Buffer
	for _, q := range []string{`SELECT COALESCE(content, '') FROM inbox`, `SELECT sealed FROM archive_item`, `SELECT payload FROM job`} {
		rows, err := p.DB.R.Query(q)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var b []byte
			rows.Scan(&b)
			out.Write(b)
		}
		rows.Close()
	}
	return out.Bytes()
}

// Holds bind the archive: past archive_retention, items go, except those a
// standing hold on their room or sender keeps.
func TestArchiveRetentionSparesHolds(t *testing.T) {
	eachDB(t, func(t *testing.T, dbType string) {
		p, _ := newArchive(t, dbType, "version: 1\ndefaults:\n  archive: on\n  archive_retention: 1d\n")
		base := p.Clock.Now().UnixMilli()
		p.Put(t, "t1", member("$m1", "@ann:h", "join", base), text("$a", "@ann:h", "one", base+1), text("$b", "@bo:h", "two", base+2),
			map[string]any{"event_id": "$c", "room_id": "!other:h", "type": "m.room.message", "sender": "@cy:h", "origin_server_ts": base + 3,
				"content": map[string]any{"msgtype": "m.text", "body": "three"}})
		p.Dispatch(t)
		ctx := context.Background()
		if _, err := expiry.PlaceHold(ctx, p.DB, p.Chain, "", "@bo:h", "litigation", "os:test"); err != nil {
			t.Fatal(err)
		}
		if _, err := expiry.PlaceHold(ctx, p.DB, p.Chain, "!other:h", "", "litigation", "os:test"); err != nil {
			t.Fatal(err)
		}
		if n, err := Purge(ctx, p.DB, p.Chain, time.UnixMilli(base).Add(23*time.Hour)); err != nil || n != 0 {
			t.Fatalf("before retention ran out: purged %d (%v)", n, err)
		}
		n, err := Purge(ctx, p.DB, p.Chain, time.UnixMilli(base).Add(25*time.Hour))
		if err != nil || n != 2 {
			t.Fatalf("purged %d (%v), want ann's message and her membership", n, err)
		}
		for _, ev := range []string{"$b", "$c"} {
			if p.Count(t, `SELECT COUNT(*) FROM archive_item WHERE event_id = $1`, ev) != 1 {
				t.Errorf("%s, under a hold, was purged", ev)
			}
		}
		found := false
		for _, r := range p.Records(t) {
			found = found || (r["type"] == "archive" && r["action"] == "purge" && r["count"] == float64(2))
		}
		if !found {
			t.Errorf("the purge is not audited with its count")
		}
	})
}

// A deployment that archives nothing needs no archive key: none is made
// until a policy that archives is in force.
func TestArchiveKeyMadeOnlyWhenArchiving(t *testing.T) {
	_, f := newArchive(t, "sqlite3", "version: 1\n")
	path := f.env.Config.Keys.ArchiveFile
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("an archive key was made with no archiving policy (%v)", err)
	}
	on, err := policy.Parse("policy.yaml", []byte("version: 1\ndefaults:\n  archive: on\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Enrol(context.Background(), on); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("archive key after an archiving policy: %v %v", st, err)
	}
}

// An archived message's files are noted (file and thumbnail, plain or
// encrypted); when its expiry is done, their deletion is queued; where the
// homeserver cannot delete media, that job fails for good (audited, and
// the room listed by the rooms feature's problems).
func TestExpiredMessagesMediaQueuedForDeletion(t *testing.T) {
	eachDB(t, func(t *testing.T, dbType string) {
		p, f := newArchive(t, dbType, "version: 1\ndefaults:\n  archive: on\n")
		base := p.Clock.Now().UnixMilli()
		p.Put(t, "t1", map[string]any{"event_id": "$img", "room_id": room, "type": "m.room.message", "sender": "@ann:h", "origin_server_ts": base,
			"content": map[string]any{"msgtype": "m.image", "body": "scan.png", "url": "mxc://h/plainfile",
				"info": map[string]any{"thumbnail_file": map[string]any{"url": "mxc://h/thumbfile"}}}},
			text("$txt", "@ann:h", "no file", base+1))
		p.Dispatch(t)
		if n := p.Count(t, `SELECT COUNT(*) FROM archive_media WHERE event_id = '$img'`); n != 2 {
			t.Fatalf("files noted: %d, want the file and its thumbnail", n)
		}
		ctx := context.Background()
		for _, ev := range []string{"$img", "$txt"} {
			payload, _ := json.Marshal(appservice.ActionPayload{Room: room, EventID: ev})
			err := p.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
				return f.JobOutcome(ctx, tx, &appservice.Job{Kind: "expire", Payload: payload}, "done", "", p.Clock.Now())
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		if st, _ := p.JobState(t, "media_delete:$img"); st != "pending" {
			t.Fatalf("the expired image's media deletion is %q", st)
		}
		if n := p.Count(t, `SELECT COUNT(*) FROM job WHERE dedupe_key = 'media_delete:$txt'`); n != 0 {
			t.Fatalf("a message without files got a media deletion")
		}
		p.RunDue(t)
		if st, errText := p.JobState(t, "media_delete:$img"); st != "failed" || !strings.Contains(errText, "no media delete API") {
			t.Fatalf("without a media API: %q %q", st, errText)
		}
	})
}

// A redaction of an archived message queues its files' deletion; under a
// legal hold (here on the room) the files stay and the job is done.
func TestHeldMediaStays(t *testing.T) {
	p, _ := newArchive(t, "sqlite3", "version: 1\ndefaults:\n  archive: on\n")
	base := p.Clock.Now().UnixMilli()
	p.Put(t, "t1", imageMsg("$img", base))
	p.Dispatch(t)
	if _, err := expiry.PlaceHold(context.Background(), p.DB, p.Chain, room, "", "litigation", "os:test"); err != nil {
		t.Fatal(err)
	}
	p.Put(t, "t2", map[string]any{"event_id": "$red", "room_id": room, "type": "m.room.redaction", "sender": "@ann:h", "redacts": "$img",
		"origin_server_ts": base + 1, "content": map[string]any{}})
	p.Dispatch(t)
	p.RunDue(t)
	if st, errText := p.JobState(t, "media_delete:$img"); st != "done" {
		t.Fatalf("the held message's media job: %q %q", st, errText)
	}
	if n := p.Count(t, `SELECT COUNT(*) FROM archive_media WHERE event_id = '$img'`); n != 1 {
		t.Fatalf("the held message's file was let go (%d rows left)", n)
	}
}

// A redaction names its target itself: one sent in another room (where
// it redacts nothing) does not get the target's files deleted; the
// refusal is audited.
func TestRedactionInAnotherRoomTakesNoFiles(t *testing.T) {
	p, _ := newArchive(t, "sqlite3", "version: 1\ndefaults:\n  archive: on\n")
	base := p.Clock.Now().UnixMilli()
	p.Put(t, "t1", imageMsg("$img", base),
		map[string]any{"event_id": "$red", "room_id": "!mallory:h", "type": "m.room.redaction", "sender": "@mal:h", "redacts": "$img",
			"origin_server_ts": base + 1, "content": map[string]any{}})
	p.Dispatch(t)
	p.RunDue(t)
	if st, errText := p.JobState(t, "media_delete:$img"); st != "done" {
		t.Fatalf("the job: %q %q", st, errText)
	}
	if n := p.Count(t, `SELECT COUNT(*) FROM archive_media WHERE event_id = '$img'`); n != 1 {
		t.Fatalf("the file was let go by a redaction in another room")
	}
	found := false
	for _, r := range p.Records(t) {
		found = found || (r["type"] == "archive" && r["action"] == "media-refused" && r["detail"] == "other-room")
	}
	if !found {
		t.Fatalf("the refusal is not audited")
	}
}
