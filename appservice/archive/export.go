package archive

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/tidwall/gjson"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/config"
)

// Query is what an eDiscovery export is of: one room, one user's
// messages, or what a legal hold covers, between two times.
type Query struct {
	Room, User   string
	Hold         int64
	Since, Until time.Time // zero: unbounded
	Reason, By   string
}

// kind names the query in the audit trail.
func (q Query) kind() string {
	switch {
	case q.Hold != 0:
		return fmt.Sprintf("hold:%d", q.Hold)
	case q.Room != "":
		return "room"
	}
	return "user"
}

// Line is one line of messages.jsonl: a message, an edit or a redaction,
// as the archive has it, with who was in the room when it was sent.
type Line struct {
	Time      string `json:"time"`
	Kind      string `json:"kind"` // message, edit, redaction
	RoomID    string `json:"room_id"`
	EventID   string `json:"event_id"`
	Sender    string `json:"sender"`
	Type      string `json:"type"`
	Encrypted bool   `json:"encrypted"`
	MsgType   string `json:"msgtype,omitempty"`
	Body      string `json:"body,omitempty"`
	// EditOf: an edit's original; EditedBy: a message's later edits.
	EditOf   string   `json:"edit_of,omitempty"`
	EditedBy []string `json:"edited_by,omitempty"`
	// Redacts and Reason: a redaction; RedactedBy: the message's.
	Redacts     string       `json:"redacts,omitempty"`
	Reason      string       `json:"reason,omitempty"`
	ByService   bool         `json:"by_service,omitempty"`
	RedactedBy  string       `json:"redacted_by,omitempty"`
	Attachments []Attachment `json:"attachments,omitempty"`
	Members     []string     `json:"members"`
	// Content is the message's content as its sender's client wrote it.
	Content json.RawMessage `json:"content,omitempty"`
}

// Attachment is a message's file in the package.
type Attachment struct {
	Name     string `json:"name"`
	File     string `json:"file,omitempty"` // path in the package
	MimeType string `json:"mimetype,omitempty"`
	SHA256   string `json:"sha256,omitempty"`
	Size     int    `json:"size"`
	Missing  string `json:"missing,omitempty"`
}

// Missing is a message of the exported rooms the archive could not read.
type Missing struct {
	Time    string `json:"time"`
	RoomID  string `json:"room_id"`
	EventID string `json:"event_id"`
	// Sender is the sender's ID where they were a member the archive knows
	// of, else the audit trail's pseudonym.
	Sender string `json:"sender"`
	Reason string `json:"reason"`
}

// Manifest describes a package: what was asked, by whom and why, what is
// in it, and the SHA-256 of every other file (SHA256SUMS has the same, and
// the manifest's own, for sha256sum -c).
type Manifest struct {
	Format    string         `json:"format"`
	CreatedAt string         `json:"created_at"`
	CreatedBy string         `json:"created_by"`
	Reason    string         `json:"reason"`
	Query     map[string]any `json:"query"`
	Rooms     []RoomSummary  `json:"rooms"`
	Counts    map[string]int `json:"counts"`
	Files     []FileSum      `json:"files"`
}

// RoomSummary is one room in a package.
type RoomSummary struct {
	RoomID     string         `json:"room_id"`
	Messages   int            `json:"messages"`
	Transcript string         `json:"transcript"`
	Missing    map[string]int `json:"missing,omitempty"`
}

// FileSum is one file of the package and its digest.
type FileSum struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// PackageFormat names the layout docs/archive.md describes.
const PackageFormat = "matrix-hipaa eDiscovery package v1"

// Export writes the package for q into out (which must not exist or be
// empty). It is refused without a reason; every export, and every refusal,
// is audited with who asked, the query's kind and a digest of the reason
// (never the reason itself, which the manifest keeps).
func Export(ctx context.Context, db *store.DB, chain *audit.Chain, ring *Keyring, q Query, out string) (m *Manifest, err error) {
	keys := chain.Keys()
	rec := &audit.Record{Type: audit.TypeArchive, Action: "export", Actor: q.By, Detail: q.kind()}
	if q.Reason != "" {
		sum := sha256.Sum256([]byte(q.Reason))
		rec.Detail += " reason-sha256:" + hex.EncodeToString(sum[:8])
	}
	defer func() {
		if m != nil {
			rec.Count = int64(m.Counts["messages"])
		}
		err = appservice.RecordCommand(ctx, db, chain, rec, err)
	}()
	n := 0
	for _, set := range []bool{q.Room != "", q.User != "", q.Hold != 0} {
		if set {
			n++
		}
	}
	switch {
	case q.Reason == "":
		return nil, appservice.Invalid("an export needs a reason (-reason): it is kept in the package's manifest and its digest in the audit trail")
	case n != 1:
		return nil, appservice.Invalid("say what to export: one of -room, -user or -hold")
	}
	if q.Hold != 0 {
		var room, user string
		if err := db.R.QueryRowContext(ctx, `SELECT room_id, user_id FROM legal_hold WHERE id = $1`, q.Hold).Scan(&room, &user); errors.Is(err, sql.ErrNoRows) {
			return nil, appservice.Invalid("no legal hold %d", q.Hold)
		} else if err != nil {
			return nil, err
		}
		q.Room, q.User = room, user
	}
	if q.Room != "" {
		rec.Room = keys.Room(q.Room)
	}
	if err := emptyDir(out); err != nil {
		return nil, err
	}
	items, err := loadItems(ctx, db, ring, keys, q)
	if err != nil {
		return nil, err
	}
	p := &pkg{dir: out, ring: ring, db: db}
	m, err = p.write(ctx, items, q, keys)
	return m, err
}

// emptyDir makes dir (0700) or checks that it is empty.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return os.MkdirAll(dir, 0o700)
	}
	if err != nil {
		return err
	}
	if len(entries) > 0 {
		return appservice.Invalid("%s is not empty: an export goes into a new folder", dir)
	}
	return nil
}

// loadItems opens every archived item the query covers, with the
// memberships of their rooms (for who was there), in time order. A record
// that does not open stops the export, naming it.
func loadItems(ctx context.Context, db *store.DB, ring *Keyring, keys *audit.Keys, q Query) ([]Record, error) {
	var rooms []string
	switch {
	case q.Room != "":
		rooms = []string{keys.Room(q.Room)}
	default:
		err := eachRow(ctx, db, `SELECT DISTINCT room_p FROM archive_item WHERE sender_p = $1 ORDER BY room_p`, []any{keys.User(q.User)}, func(s scanner) error {
			var r string
			err := s.Scan(&r)
			rooms = append(rooms, r)
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	var out []Record
	for _, room := range rooms {
		err := eachRow(ctx, db, `SELECT event_id, kind, sealed FROM archive_item WHERE room_p = $1 ORDER BY sent_at, event_id`, []any{room}, func(s scanner) error {
			var id, kind string
			var sealed []byte
			if err := s.Scan(&id, &kind, &sealed); err != nil {
				return err
			}
			plain, err := ring.Open(kind+"/"+id, sealed)
			if err != nil {
				return err
			}
			var r Record
			if err := json.Unmarshal(plain, &r); err != nil {
				return fmt.Errorf("archive record %s/%s: %w", kind, id, err)
			}
			if r.EventID != id || r.Kind != kind {
				return fmt.Errorf("archive record %s/%s: holds %s/%s", kind, id, r.Kind, r.EventID)
			}
			out = append(out, r)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// pkg writes one package.
type pkg struct {
	dir   string
	ring  *Keyring
	db    *store.DB
	files []FileSum
}

func (p *pkg) put(rel string, data []byte) error {
	path := filepath.Join(p.dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := config.WriteFileAtomic(path, data, 0o600); err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	p.files = append(p.files, FileSum{Path: rel, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))})
	return nil
}

func inRange(q Query, ms int64) bool {
	t := time.UnixMilli(ms)
	return (q.Since.IsZero() || !t.Before(q.Since)) && (q.Until.IsZero() || t.Before(q.Until))
}

func stamp(ms int64) string { return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z") }

// write lays the package out: messages.jsonl, membership.jsonl,
// missing.jsonl, attachments/, transcripts/, manifest.json, SHA256SUMS.
func (p *pkg) write(ctx context.Context, items []Record, q Query, keys *audit.Keys) (*Manifest, error) {
	byRoom := map[string][]Record{}
	var roomOrder []string
	for _, r := range items {
		if _, ok := byRoom[r.RoomID]; !ok {
			roomOrder = append(roomOrder, r.RoomID)
		}
		byRoom[r.RoomID] = append(byRoom[r.RoomID], r)
	}
	sort.Strings(roomOrder)
	m := &Manifest{Format: PackageFormat, CreatedAt: time.Now().UTC().Format(time.RFC3339), CreatedBy: q.By, Reason: q.Reason,
		Query: map[string]any{}, Counts: map[string]int{}}
	for k, v := range map[string]string{"room": q.Room, "user": q.User} {
		if v != "" {
			m.Query[k] = v
		}
	}
	if q.Hold != 0 {
		m.Query["hold"] = q.Hold
	}
	if !q.Since.IsZero() {
		m.Query["since"] = q.Since.UTC().Format(time.RFC3339)
	}
	if !q.Until.IsZero() {
		m.Query["until"] = q.Until.UTC().Format(time.RFC3339)
	}
	var lines, members, missing []byte
	for _, room := range roomOrder {
		rl, ml, err := p.room(byRoom[room], q)
		if err != nil {
			return nil, err
		}
		sum := RoomSummary{RoomID: room, Transcript: "transcripts/" + safeName(room) + ".html"}
		for _, l := range rl {
			b, _ := json.Marshal(l)
			lines = append(append(lines, b...), '\n')
			if l.Kind != KindRedaction {
				sum.Messages++
			}
			m.Counts[l.Kind+"s"]++
			m.Counts["attachments"] += len(l.Attachments)
		}
		for _, l := range ml {
			b, _ := json.Marshal(l)
			members = append(append(members, b...), '\n')
		}
		miss, err := p.missing(ctx, room, byRoom[room], q, keys)
		if err != nil {
			return nil, err
		}
		for _, x := range miss {
			b, _ := json.Marshal(x)
			missing = append(append(missing, b...), '\n')
			if sum.Missing == nil {
				sum.Missing = map[string]int{}
			}
			sum.Missing[x.Reason]++
			m.Counts["missing"]++
		}
		html, err := transcript(room, rl, miss, p.attachmentsOf(rl))
		if err != nil {
			return nil, err
		}
		if err := p.put(sum.Transcript, html); err != nil {
			return nil, err
		}
		m.Rooms = append(m.Rooms, sum)
	}
	for name, data := range map[string][]byte{"messages.jsonl": lines, "membership.jsonl": members, "missing.jsonl": missing} {
		if err := p.put(name, data); err != nil {
			return nil, err
		}
	}
	sort.Slice(p.files, func(i, j int) bool { return p.files[i].Path < p.files[j].Path })
	m.Files = append([]FileSum(nil), p.files...)
	mb, _ := json.MarshalIndent(m, "", "  ")
	if err := p.put("manifest.json", append(mb, '\n')); err != nil {
		return nil, err
	}
	var sums strings.Builder
	sort.Slice(p.files, func(i, j int) bool { return p.files[i].Path < p.files[j].Path })
	for _, f := range p.files {
		fmt.Fprintf(&sums, "%s  %s\n", f.SHA256, f.Path)
	}
	if err := p.put("SHA256SUMS", []byte(sums.String())); err != nil {
		return nil, err
	}
	return m, nil
}

// membershipLine is one line of membership.jsonl.
type membershipLine struct {
	Time       string `json:"time"`
	RoomID     string `json:"room_id"`
	EventID    string `json:"event_id"`
	User       string `json:"user"`
	Membership string `json:"membership"`
	Sender     string `json:"sender"`
}

// room turns one room's records (time order) into its lines: who was
// joined is replayed from the memberships, edits and redactions are tied
// to what they change, and attachments are written out.
func (p *pkg) room(recs []Record, q Query) ([]Line, []membershipLine, error) {
	joined := map[string]bool{}
	var lines []Line
	var mlines []membershipLine
	index := map[string]int{} // event ID -> line
	for _, r := range recs {
		if r.Kind == KindMember {
			joined[r.User] = r.Membership == "join"
			if inRange(q, r.SentAt) {
				mlines = append(mlines, membershipLine{Time: stamp(r.SentAt), RoomID: r.RoomID, EventID: r.EventID, User: r.User, Membership: r.Membership, Sender: r.Sender})
			}
			continue
		}
		if !inRange(q, r.SentAt) || (q.User != "" && r.Sender != q.User && r.Kind != KindRedaction) {
			continue
		}
		l := Line{Time: stamp(r.SentAt), Kind: r.Kind, RoomID: r.RoomID, EventID: r.EventID, Sender: r.Sender, Type: r.Type, Encrypted: r.Encrypted,
			Members: []string{}}
		for u, in := range joined {
			if in {
				l.Members = append(l.Members, u)
			}
		}
		sort.Strings(l.Members)
		switch r.Kind {
		case KindRedaction:
			if _, ok := index[r.Redacts]; !ok && q.User != "" && r.Sender != q.User {
				continue // a redaction of nothing this export holds
			}
			l.Redacts, l.Reason, l.ByService = r.Redacts, r.Reason, r.ByService
			if i, ok := index[r.Redacts]; ok && lines[i].RedactedBy == "" {
				lines[i].RedactedBy = r.EventID // the first: later ones change nothing
			}
		case KindMessage:
			c := gjson.ParseBytes(r.Content)
			l.MsgType, l.Body, l.Content = c.Get("msgtype").String(), c.Get("body").String(), r.Content
			if c.Get(`m\.relates_to.rel_type`).String() == "m.replace" {
				l.Kind = "edit"
				l.EditOf = c.Get(`m\.relates_to.event_id`).String()
				if nc := c.Get(`m\.new_content.body`); nc.Exists() {
					l.Body = nc.String()
				}
				if i, ok := index[l.EditOf]; ok {
					lines[i].EditedBy = append(lines[i].EditedBy, r.EventID)
				}
			}
			for _, f := range r.Files {
				a, err := p.attachment(r.EventID, f)
				if err != nil {
					return nil, nil, err
				}
				l.Attachments = append(l.Attachments, a)
			}
		}
		index[r.EventID] = len(lines)
		lines = append(lines, l)
	}
	return lines, mlines, nil
}

// attachment writes one archived file into attachments/, checking it
// against the hash recorded when it was archived.
func (p *pkg) attachment(eventID string, f File) (Attachment, error) {
	a := Attachment{Name: f.Name, MimeType: f.MimeType, SHA256: f.SHA256, Size: f.Size, Missing: f.Missing}
	if f.Missing != "" {
		return a, nil
	}
	var sealed []byte
	err := p.db.R.QueryRow(`SELECT sealed FROM archive_file WHERE event_id = $1 AND n = $2`, eventID, f.N).Scan(&sealed)
	if errors.Is(err, sql.ErrNoRows) {
		a.Missing = "gone"
		return a, nil
	} else if err != nil {
		return a, err
	}
	data, err := p.ring.Open(fileName(eventID, f.N), sealed)
	if err != nil {
		return a, err
	}
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != f.SHA256 {
		return a, fmt.Errorf("archive record %s: the file's SHA-256 is not the one recorded when it was archived", fileName(eventID, f.N))
	}
	a.File = "attachments/" + f.SHA256[:16] + "-" + safeName(f.Name)
	if _, err := os.Stat(filepath.Join(p.dir, filepath.FromSlash(a.File))); err == nil {
		return a, nil // the same file in another message
	}
	return a, p.put(a.File, data)
}

// attachmentsOf maps package paths to their bytes' place, for the
// transcript to show images inline.
func (p *pkg) attachmentsOf(lines []Line) map[string]string {
	out := map[string]string{}
	for _, l := range lines {
		for _, a := range l.Attachments {
			if a.File != "" {
				out[a.File] = filepath.Join(p.dir, filepath.FromSlash(a.File))
			}
		}
	}
	return out
}

// missing lists the room's messages the archive could not read, in range:
// senders by ID where the archive knows them as members or senders.
func (p *pkg) missing(ctx context.Context, room string, recs []Record, q Query, keys *audit.Keys) ([]Missing, error) {
	names := map[string]string{}
	for _, r := range recs {
		names[keys.User(r.Sender)] = r.Sender
		if r.User != "" {
			names[keys.User(r.User)] = r.User
		}
	}
	var out []Missing
	err := eachRow(ctx, p.db, `SELECT event_id, sender_p, sent_at, reason FROM archive_missing WHERE room_p = $1 ORDER BY sent_at, event_id`, []any{keys.Room(room)}, func(s scanner) error {
		var x Missing
		var sp string
		var at int64
		if err := s.Scan(&x.EventID, &sp, &at, &x.Reason); err != nil {
			return err
		}
		if !inRange(q, at) || (q.User != "" && sp != keys.User(q.User)) {
			return nil
		}
		x.Time, x.RoomID, x.Sender = stamp(at), room, sp
		if n, ok := names[sp]; ok {
			x.Sender = n
		}
		out = append(out, x)
		return nil
	})
	return out, err
}

// safeName is a file name made of what is safe on every file system.
func safeName(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	out := strings.TrimLeft(b.String(), ".")
	if len(out) > 80 {
		out = out[:80]
	}
	if out == "" {
		out = "file"
	}
	return out
}
