package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"image"
	"image/color"
	"image/png"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/attachment"
	"maunium.net/go/mautrix/crypto/cryptohelper"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/archive"
	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// An archived room on real E2EE clients: alice (mautrix, goolm) sends a
// message, edits it, sends an encrypted image and a message she redacts;
// nina (matrix-nio, libolm) sends one; wes's client withholds the room key
// from the compliance bot (its device blacklisted, as "never send to
// unverified sessions" would). Every message expires from the clients
// after 20 s. The eDiscovery export then has each message's content as
// written, the edit and the redaction shown as such, the image byte for
// byte, who was in the room, and wes's message listed as withheld, as
// `archive report` lists it; SHA256SUMS holds for every file. Nothing the
// clients wrote, image included, is anywhere in the service's files.
// Redactions are in the record where the homeserver pushes them to the
// service: Synapse does; Dendrite v0.13.8 sends application services no
// m.room.redaction (element-hq/dendrite#3445), so there the test checks
// the rest.
func TestArchiveExportAfterExpiry(t *testing.T) {
	py := pythonWithNio()
	if out, err := exec.Command(py, "-c", "import nio, olm").CombinedOutput(); err != nil {
		t.Fatalf("%s cannot import nio and olm (apt-get install python3-matrix-nio python3-olm): %v\n%s", py, err, out)
	}
	st, bot, alice := archiveStack(t, "version: 1\ndefaults:\n  retention: 20s\n  archive: on\narchive_notice: This room is archived for the record.\n")
	ctx := context.Background()
	wes := newE2EEUser(t, st, "wes")
	ninaPassword := "pw-nina-0123456789"
	nina, err := st.CreateUser(ctx, "nina", ninaPassword, false)
	if err != nil {
		t.Fatal(err)
	}
	room := enrolledRoom(t, st, alice, id.UserID(nina), wes.UserID)
	if _, err := wes.JoinRoomByID(ctx, room); err != nil {
		t.Fatal(err)
	}
	alice.waitMessage(t, "the archive notice", func(e *event.Event) bool {
		return e.Sender == bot && e.RoomID == room && strings.Contains(textOf(e), "archived for the record")
	})
	runCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	members := strings.Join([]string{string(alice.UserID), string(wes.UserID), string(bot)}, ",")
	nio := startScript(t, runCtx, "nio", nina, py, mustAbs("testdata/nio_send.py"), st.HSURL, nina, ninaPassword, string(room), t.TempDir(), members, "ARCHIVE-CANARY-nio: pt in bed 9 allergic to latex")
	waitFor(t, "everyone in the room in alice's client", func() bool {
		return alice.StateStore.IsInRoom(ctx, room, id.UserID(nina)) && alice.StateStore.IsInRoom(ctx, room, wes.UserID)
	})

	send := func(c *e2eeUser, content *event.MessageEventContent) id.EventID {
		t.Helper()
		resp, err := c.SendMessageEvent(ctx, room, event.EventMessage, content)
		if err != nil {
			t.Fatal(err)
		}
		return resp.EventID
	}
	first := send(alice, &event.MessageEventContent{MsgType: event.MsgText, Body: "ARCHIVE-CANARY-alpha: K+ 6.1, repeat the BMP"})
	edit := &event.MessageEventContent{MsgType: event.MsgText, Body: "ARCHIVE-CANARY-alpha-edited: K+ 6.1, repeat the BMP at 14:00"}
	edit.SetEdit(first)
	edited := send(alice, edit)
	img, up, imageContent := uploadImage(t, alice, "wound-day3.png")
	if _, err := wes.DownloadBytes(ctx, up); err != nil {
		t.Fatalf("another member cannot fetch the image's file before it expires: %v", err)
	}
	image := send(alice, imageContent)
	wrong := send(alice, &event.MessageEventContent{MsgType: event.MsgText, Body: "ARCHIVE-CANARY-delta: meant for the other ward"})
	redaction, err := alice.RedactEvent(ctx, room, wrong, mautrix.ReqRedact{Reason: "sent to the wrong room"})
	if err != nil {
		t.Fatal(err)
	}

	// wes's client refuses the bot's device the key.
	mach := wes.Crypto.(*cryptohelper.CryptoHelper).Machine()
	if _, err := mach.FetchKeys(ctx, []id.UserID{bot}, true); err != nil {
		t.Fatal(err)
	}
	devices, err := mach.CryptoStore.GetDevices(ctx, bot)
	if err != nil || len(devices) == 0 {
		t.Fatalf("wes sees no devices of the bot (%v)", err)
	}
	for _, d := range devices {
		d.Trust = id.TrustStateBlacklisted
		if err := mach.CryptoStore.PutDevice(ctx, bot, d); err != nil {
			t.Fatal(err)
		}
	}
	withheld := send(wes, &event.MessageEventContent{MsgType: event.MsgText, Body: "ARCHIVE-CANARY-withheld: not for the archive"})

	var ninaID string
	for l := range nio.lines {
		if l.Error != "" {
			t.Fatalf("nio client: %s", l.Error)
		}
		if l.Step == "sent" {
			ninaID = l.EventID
		}
	}
	if err := nio.cmd.Wait(); err != nil || ninaID == "" {
		t.Fatalf("nio client: %v (sent %q)\n%s", err, ninaID, tail(nio.stderr.String(), 3000))
	}

	// The archive reads what it has keys for, and lists what it has not.
	var report []byte
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("archive report:\n%s", report)
			rows, err := serviceDB(t, st, "mode=ro").Query(`SELECT kind, COUNT(*) FROM archive_item GROUP BY kind UNION ALL SELECT event_type, COUNT(*) FROM inbox GROUP BY event_type`)
			for err == nil && rows.Next() {
				var k string
				var n int
				rows.Scan(&k, &n)
				t.Logf("archive_item %s: %d", k, n)
			}
		}
	})
	waitFor2(t, 60*time.Second, "the archive to hold five messages and list wes's as withheld", func() bool {
		report, _, _ = st.Service("archive", "report")
		return reportRow(string(report), string(room)) == "5 1 withheld:m.blacklisted:1"
	})
	// Every message expires from the clients.
	for _, ev := range []id.EventID{first, edited, image, id.EventID(ninaID), withheld} {
		waitFor2(t, 60*time.Second, "message "+string(ev)+" to expire", func() bool {
			e, err := alice.GetEvent(ctx, room, ev)
			return err == nil && e.Unsigned.RedactedBecause != nil
		})
	}

	// Its file goes with it where the homeserver can delete media (Synapse's
	// admin API); elsewhere the failure is audited and the room listed.
	if homeserver == "synapse" {
		waitFor2(t, 60*time.Second, "the expired image's file to be deleted", func() bool {
			_, err := wes.DownloadBytes(ctx, up)
			return errors.Is(err, mautrix.MNotFound)
		})
	} else {
		waitAudit(t, st, "the media deletion's failure", func(l auditLine) bool {
			return l.Type == "job.failed" && l.Action == "media_delete"
		})
		if out, _, err := st.Service("rooms", "-problems"); err == nil || !strings.Contains(string(out), "media_delete") {
			t.Fatalf("rooms -problems does not list the media left (err %v):\n%s", err, out)
		}
	}

	out := filepath.Join(t.TempDir(), "export")
	if _, stderr, err := st.Service("archive", "export", "-room", string(room), "-out", out); err == nil || !strings.Contains(string(stderr), "reason") {
		t.Fatalf("an export without a reason: err %v, %s", err, stderr)
	}
	if _, err := os.Stat(out); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused export wrote %s", out)
	}
	// The expiries' redactions reach the service a moment after the
	// clients see them: export until every message shows its own.
	var byID map[string]archive.Line
	expired := []id.EventID{first, edited, image, id.EventID(ninaID), wrong}
	for try := 0; ; try++ {
		if try > 0 {
			out = filepath.Join(t.TempDir(), "export")
		}
		stdout, stderr, err := st.Service("archive", "export", "-room", string(room), "-reason", "Case 26-114 discovery request", "-out", out)
		if err != nil {
			t.Fatalf("archive export: %v\n%s%s", err, stdout, stderr)
		}
		byID = map[string]archive.Line{}
		for _, l := range readLines[archive.Line](t, filepath.Join(out, "messages.jsonl")) {
			byID[l.EventID] = l
		}
		if homeserver != "synapse" || !slices.ContainsFunc(expired, func(ev id.EventID) bool { return byID[string(ev)].RedactedBy == "" }) || try == 40 {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	wantMembers := []string{string(alice.UserID), string(bot), nina, string(wes.UserID)}
	slices.Sort(wantMembers)
	check := func(ev id.EventID, kind, body string) archive.Line {
		t.Helper()
		l, ok := byID[string(ev)]
		if !ok {
			t.Fatalf("%s is not in the export", ev)
		}
		if l.Kind != kind || l.Body != body || !l.Encrypted {
			t.Fatalf("%s exported as %s %q (encrypted %v), want %s %q", ev, l.Kind, l.Body, l.Encrypted, kind, body)
		}
		if !slices.Equal(l.Members, wantMembers) {
			t.Fatalf("%s: members %v, want %v", ev, l.Members, wantMembers)
		}
		if homeserver == "synapse" && l.RedactedBy == "" {
			data, _ := os.ReadFile(filepath.Join(out, "messages.jsonl"))
			t.Fatalf("%s: its redaction (the expiry) is not shown:\n%s", ev, data)
		}
		return l
	}
	check(first, "message", "ARCHIVE-CANARY-alpha: K+ 6.1, repeat the BMP")
	if l := check(edited, "edit", "ARCHIVE-CANARY-alpha-edited: K+ 6.1, repeat the BMP at 14:00"); l.EditOf != string(first) || !slices.Contains(byID[string(first)].EditedBy, string(edited)) {
		t.Fatalf("the edit is not tied to its original: %+v / %+v", l, byID[string(first)])
	}
	check(id.EventID(ninaID), "message", "ARCHIVE-CANARY-nio: pt in bed 9 allergic to latex")
	check(wrong, "message", "ARCHIVE-CANARY-delta: meant for the other ward")
	if r := byID[string(redaction.EventID)]; homeserver == "synapse" &&
		(r.Kind != "redaction" || r.Redacts != string(wrong) || r.Reason != "sent to the wrong room" || byID[string(wrong)].RedactedBy != string(redaction.EventID)) {
		t.Fatalf("alice's redaction: %+v", r)
	}
	il := check(image, "message", "wound-day3.png")
	if len(il.Attachments) != 1 || il.Attachments[0].File == "" {
		t.Fatalf("the image's attachment: %+v", il.Attachments)
	}
	got, err := os.ReadFile(filepath.Join(out, il.Attachments[0].File))
	if err != nil || !bytes.Equal(got, img) {
		t.Fatalf("the exported image is not the one sent (%v)", err)
	}
	if _, ok := byID[string(withheld)]; ok {
		t.Fatalf("wes's withheld message is in the export as a message")
	}
	missing := readLines[archive.Missing](t, filepath.Join(out, "missing.jsonl"))
	if len(missing) != 1 || missing[0].EventID != string(withheld) || missing[0].Reason != "withheld:m.blacklisted" || missing[0].Sender != string(wes.UserID) {
		t.Fatalf("missing.jsonl: %+v", missing)
	}
	checkSums(t, out)
	var m archive.Manifest
	if data, err := os.ReadFile(filepath.Join(out, "manifest.json")); err != nil || json.Unmarshal(data, &m) != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if m.Reason != "Case 26-114 discovery request" || m.Counts["missing"] != 1 || len(m.Rooms) != 1 || m.Rooms[0].Missing["withheld:m.blacklisted"] != 1 {
		t.Fatalf("manifest: %+v", m)
	}
	// The export is audited with its query and a digest of its reason.
	rec := waitAudit(t, st, "the export", func(l auditLine) bool {
		return l.Type == "archive" && l.Action == "export" && l.Outcome == "success"
	})
	if !strings.Contains(rec.Detail, "reason-sha256:") || strings.Contains(rec.Detail, "Case") {
		t.Fatalf("the export's audit record: %+v", rec)
	}
	waitAudit(t, st, "the refused export", func(l auditLine) bool {
		return l.Type == "archive" && l.Action == "export" && l.Outcome == "denied"
	})

	// None of what people wrote is in the service's own files: database,
	// its journal, logs, audit exports, keys.
	canaries := [][]byte{[]byte("ARCHIVE-CANARY"), []byte("allergic to latex"), []byte("wound-day3"), img[len(img)/2-24 : len(img)/2+24]}
	serviceDir := filepath.Dir(st.ServiceConfig)
	err = filepath.WalkDir(serviceDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, c := range canaries {
			if bytes.Contains(data, c) {
				t.Errorf("%s holds %q in the clear", path, c[:min(len(c), 20)])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// archiveStack is a stack whose policy (pol) archives rooms, its bot, and
// alice on an E2EE client.
func archiveStack(t *testing.T, pol string) (*devstack.Stack, id.UserID, *e2eeUser) {
	t.Helper()
	st := startStack(t, devstack.Options{})
	setPolicy(t, st, []byte(pol))
	return st, botOf(t, st), newE2EEUser(t, st, "alice")
}

// archivedRoom is a room alice creates (inviting invite) once the bot has
// joined it and told her it is archived.
func archivedRoom(t *testing.T, st *devstack.Stack, bot id.UserID, alice *e2eeUser, invite ...id.UserID) id.RoomID {
	t.Helper()
	room := enrolledRoom(t, st, alice, invite...)
	alice.waitMessage(t, "the archive notice", func(e *event.Event) bool { return e.Sender == bot && e.RoomID == room })
	return room
}

// uploadImage uploads a new test image as u, encrypted as a client does:
// its bytes, its mxc URI, and the content of a message that sends it.
func uploadImage(t *testing.T, u *e2eeUser, name string) ([]byte, id.ContentURI, *event.MessageEventContent) {
	t.Helper()
	img := testPNG(t)
	file := attachment.NewEncryptedFile()
	up, err := u.UploadBytes(context.Background(), file.Encrypt(img), "application/octet-stream")
	if err != nil {
		t.Fatal(err)
	}
	return img, up.ContentURI, &event.MessageEventContent{MsgType: event.MsgImage, Body: name, Info: &event.FileInfo{MimeType: "image/png", Size: len(img)},
		File: &event.EncryptedFileInfo{EncryptedFile: *file, URL: up.ContentURI.CUString()}}
}

// reportRow is KEPT MISSING WHY of room's row in `archive report`.
func reportRow(out, room string) string {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && f[0] == room {
			return strings.Join(f[2:5], " ")
		}
	}
	return ""
}

func waitFor2(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func readLines[T any](t *testing.T, path string) []T {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []T
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, v)
	}
	return out
}

// checkSums checks SHA256SUMS as sha256sum -c would, and that it lists
// every file of the package but itself.
func checkSums(t *testing.T, dir string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		sum, path, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q", line)
		}
		b, err := os.ReadFile(filepath.Join(dir, path))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(b)
		if hex.EncodeToString(h[:]) != sum {
			t.Fatalf("SHA256SUMS: %s does not match", path)
		}
		listed[path] = true
	}
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, path)
			if rel != "SHA256SUMS" && !listed[filepath.ToSlash(rel)] {
				t.Errorf("SHA256SUMS does not list %s", rel)
			}
		}
		return err
	})
}

// testPNG is a small real image, its pixels random so its bytes are its own.
func testPNG(t *testing.T) []byte {
	t.Helper()
	m := image.NewRGBA(image.Rect(0, 0, 24, 16))
	seed := byte(time.Now().UnixNano())
	for i := range m.Pix {
		seed = seed*31 + 7
		m.Pix[i] = seed
	}
	m.Set(0, 0, color.RGBA{255, 0, 0, 255})
	var b bytes.Buffer
	if err := png.Encode(&b, m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// A member cannot get someone else's file deleted: mal's message names the
// file of alice's image (its mxc URI and key, which every member of the
// room decrypts), then mal redacts his message. The service deletes a
// redacted message's files only where its sender uploaded them, so alice's
// file stays. Nor does a redaction of alice's message sent in mal's own
// room (where it redacts nothing) take it. When alice redacts her own
// image, it goes. Synapse only: it
// pushes redactions to the service and has the media admin API the
// deletion needs (on Dendrite neither happens, see the test above).
func TestRedTeamRedactionCannotDeleteAnothersFile(t *testing.T) {
	onSynapse(t, "media is deleted through Synapse's admin API, on the redactions Synapse pushes")
	st, bot, alice := archiveStack(t, "version: 1\ndefaults:\n  archive: on\n")
	ctx := context.Background()
	mal := newE2EEUser(t, st, "mal")
	room := archivedRoom(t, st, bot, alice, mal.UserID)
	if _, err := mal.JoinRoomByID(ctx, room); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "mal in the room", func() bool {
		m, err := alice.JoinedMembers(ctx, room)
		return err == nil && hasMember(m, mal.UserID)
	})
	_, up, content := uploadImage(t, alice, "xray.png")
	aliceMsg, err := alice.SendMessageEvent(ctx, room, event.EventMessage, content)
	if err != nil {
		t.Fatal(err)
	}
	malMsg, err := mal.SendMessageEvent(ctx, room, event.EventMessage, content)
	if err != nil {
		t.Fatal(err)
	}
	waitFor2(t, 30*time.Second, "both messages archived", func() bool {
		out, _, _ := st.Service("archive", "report")
		return reportRow(string(out), string(room)) == "2 0 -"
	})
	if _, err := mal.RedactEvent(ctx, room, malMsg.EventID); err != nil {
		t.Fatal(err)
	}
	waitAudit(t, st, "the deletion of alice's file refused", func(l auditLine) bool {
		return l.Type == "archive" && l.Action == "media-refused" && l.Outcome == "denied" && l.EventID == string(malMsg.EventID)
	})
	if _, err := mal.DownloadBytes(ctx, up); err != nil {
		t.Fatalf("alice's file was deleted by mal's redaction: %v", err)
	}
	// Nor can he name alice's message itself in a redaction of his own
	// room, where it redacts nothing.
	own, err := mal.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	// Synapse 1.160 refuses it at its client API; a redaction arriving
	// another way (over federation) is refused by the service itself
	// (TestRedactionInAnotherRoomTakesNoFiles).
	if _, err := mal.RedactEvent(ctx, own.RoomID, aliceMsg.EventID); err == nil {
		waitAudit(t, st, "the redaction from another room refused", func(l auditLine) bool {
			return l.Type == "archive" && l.Action == "media-refused" && l.Detail == "other-room" && l.EventID == string(aliceMsg.EventID)
		})
	} else if !strings.Contains(err.Error(), "different room") {
		t.Fatalf("redaction in mal's own room: %v", err)
	}
	if _, err := mal.DownloadBytes(ctx, up); err != nil {
		t.Fatalf("alice's file was deleted by a redaction in mal's room: %v", err)
	}
	if _, err := alice.RedactEvent(ctx, room, aliceMsg.EventID); err != nil {
		t.Fatal(err)
	}
	waitFor2(t, 30*time.Second, "alice's file deleted with her message", func() bool {
		_, err := mal.DownloadBytes(ctx, up)
		return errors.Is(err, mautrix.MNotFound)
	})
}

// A departed clinician's files go with their messages: alice's encrypted
// image in an archived room is kept by the archive, and once alice is
// wiped (redact all), the file is gone from the media repository for
// everyone (bob's download gets 404). Synapse only: the wipe's redactions
// reach the service as events, and Synapse's admin API deletes the file.
func TestWipeTakesArchivedFiles(t *testing.T) {
	onSynapse(t, "media is deleted through Synapse's admin API, on the redactions Synapse pushes")
	st, bot, alice := archiveStack(t, "version: 1\ndefaults:\n  archive: on\n")
	ctx := context.Background()
	bob := newUser(t, st, "bob")
	room := archivedRoom(t, st, bot, alice)
	_, up, content := uploadImage(t, alice, "ward-round.png")
	if _, err := alice.SendMessageEvent(ctx, room, event.EventMessage, content); err != nil {
		t.Fatal(err)
	}
	waitFor2(t, 30*time.Second, "the image archived", func() bool {
		out, _, _ := st.Service("archive", "report")
		return reportRow(string(out), string(room)) == "1 0 -"
	})
	if _, err := bob.DownloadBytes(ctx, up); err != nil {
		t.Fatalf("the file before the wipe: %v", err)
	}
	alice.cancel()
	if out, errOut, err := st.Service("wipe", "-user", string(alice.UserID), "-redact", "all", "-reason", "departed"); err != nil || !strings.Contains(string(out), "messages redacted: 1") {
		t.Fatalf("wipe: %v\n%s%s", err, out, errOut)
	}
	waitFor2(t, 30*time.Second, "the wiped message's file deleted", func() bool {
		_, err := bob.DownloadBytes(ctx, up)
		return errors.Is(err, mautrix.MNotFound)
	})
}
