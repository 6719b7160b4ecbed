package archive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

// megolmReader decrypts with a real Megolm inbound session (goolm), as the
// bot does once it has the session out of its crypto store: the archive's
// ingest is measured with the decryption in it, without a homeserver.
type megolmReader struct{ in olm.InboundGroupSession }

func (r megolmReader) Ready() <-chan struct{} { c := make(chan struct{}); close(c); return c }
func (r megolmReader) ReadEvent(context.Context, string, string, time.Duration) (*event.Event, error) {
	return nil, errors.New("not fetched in the benchmark")
}
func (r megolmReader) Download(context.Context, id.ContentURI) ([]byte, error) {
	return nil, errors.New("no media in the benchmark")
}
func (r megolmReader) SendNotice(context.Context, string, string, string, string, string) error {
	return nil
}
func (r megolmReader) DecryptRaw(_ context.Context, raw []byte, _ time.Duration) (*event.Event, error) {
	var evt event.Event
	if err := json.Unmarshal(raw, &evt); err != nil {
		return nil, err
	}
	var enc struct {
		Content struct {
			Ciphertext string `json:"ciphertext"`
		} `json:"content"`
	}
	json.Unmarshal(raw, &enc)
	plain, _, err := r.in.Decrypt([]byte(enc.Content.Ciphertext))
	if err != nil {
		return nil, err
	}
	var inner struct {
		Type    string          `json:"type"`
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(plain, &inner); err != nil {
		return nil, err
	}
	out := &event.Event{ID: evt.ID, RoomID: evt.RoomID, Sender: evt.Sender, Type: event.EventMessage}
	out.Content.VeryRaw = inner.Content
	if err := out.Content.ParseRaw(out.Type); err != nil {
		return nil, err
	}
	return out, nil
}

// encryptedEvents are n Megolm-encrypted text messages in room, as a
// homeserver would push them, and the session that decrypts them.
func encryptedEvents(b *testing.B, n int, base int64) ([]map[string]any, olm.InboundGroupSession) {
	out, err := olm.NewOutboundGroupSession()
	if err != nil {
		b.Fatal(err)
	}
	in, err := olm.NewInboundGroupSession([]byte(out.Key()))
	if err != nil {
		b.Fatal(err)
	}
	events := make([]map[string]any, n)
	for i := range events {
		plain, _ := json.Marshal(map[string]any{"type": "m.room.message", "room_id": room,
			"content": map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("Bed %d: K+ 5.%d, repeat the BMP at 14:00 and call the registrar", i%40, i%10)}})
		ct, err := out.Encrypt(plain)
		if err != nil {
			b.Fatal(err)
		}
		events[i] = map[string]any{"event_id": fmt.Sprintf("$e%d", i), "room_id": room, "type": "m.room.encrypted", "sender": "@ann:h", "origin_server_ts": base + int64(i),
			"content": map[string]any{"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": string(ct), "session_id": string(out.ID()), "sender_key": "k", "device_id": "D"}}
	}
	return events, in
}

// BenchmarkArchiveIngest: encrypted messages of an archived room, pushed
// and decided on (not timed), then the archiver's passes: each reads a
// batch of queued ciphertext, decrypts it (Megolm, goolm), seals it and
// commits it durably with the queue's progress. Messages per second.
func BenchmarkArchiveIngest(b *testing.B) {
	for _, dbType := range storetest.Dialects {
		b.Run(dbType, func(b *testing.B) {
			p, f := newArchive(b, dbType, "version: 1\ndefaults:\n  archive: on\n")
			base := p.Clock.Now().UnixMilli()
			events, in := encryptedEvents(b, b.N, base)
			f.Bot = megolmReader{in: in}
			for i := 0; i < len(events); i += 100 {
				p.Put(b, fmt.Sprintf("t%d", i), events[i:min(i+100, len(events))]...)
			}
			p.Dispatch(b)
			b.ResetTimer()
			for {
				n, err := f.Ingest(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				if n == 0 {
					break
				}
			}
			b.StopTimer()
			if n := p.Count(b, `SELECT COUNT(*) FROM archive_item WHERE kind = 'message'`); n != b.N {
				b.Fatalf("%d of %d archived", n, b.N)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkArchiveExport: an archived room of b.N messages (and its
// memberships) exported as a package: every record opened, the lines,
// the transcript, the manifest and SHA256SUMS written. Messages per second.
func BenchmarkArchiveExport(b *testing.B) {
	for _, dbType := range storetest.Dialects {
		b.Run(dbType, func(b *testing.B) {
			p, f := newArchive(b, dbType, "version: 1\ndefaults:\n  archive: on\n")
			base := p.Clock.Now().UnixMilli()
			evs := []map[string]any{member("$m1", "@ann:h", "join", base), member("$m2", "@bo:h", "join", base+1)}
			for i := 0; i < b.N; i++ {
				evs = append(evs, text(fmt.Sprintf("$t%d", i), "@ann:h", fmt.Sprintf("Bed %d: K+ 5.%d, repeat the BMP", i%40, i%10), base+10+int64(i)))
			}
			for i := 0; i < len(evs); i += 100 {
				p.Put(b, fmt.Sprintf("t%d", i), evs[i:min(i+100, len(evs))]...)
			}
			p.Dispatch(b)
			ring, err := f.Ring()
			if err != nil {
				b.Fatal(err)
			}
			out := filepath.Join(b.TempDir(), "pkg")
			b.ResetTimer()
			m, err := Export(context.Background(), p.DB, p.Chain, ring, Query{Room: room, Reason: "benchmark", By: "os:bench"}, out)
			b.StopTimer()
			if err != nil || m.Counts["messages"] != b.N {
				b.Fatalf("exported %v (%v), want %d messages", m, err, b.N)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
