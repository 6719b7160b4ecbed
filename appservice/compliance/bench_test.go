package compliance

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/config"
)

// BenchmarkReport is what a month's report costs on a busy deployment:
// 1,000,000 records over 30 days (encrypted messages mostly; plaintext
// redacted with its decision and job, admissions, refusals, session
// warnings), a signed checkpoint every 10,000. Side by side with the
// audit verify the report runs inside it, the floor it cannot go under:
// go test -bench Report -benchtime 3x ./appservice/compliance
func BenchmarkReport(b *testing.B) {
	const size, batch = 1_000_000, 10_000
	for _, dbType := range storetest.Dialects {
		b.Run(dbType, func(b *testing.B) {
			ctx := context.Background()
			p := apptest.New(b, dbType)
			holder := p.UsePolicy(b, "version: 1\n")
			keys := p.Chain.Keys()
			signing, err := audit.LoadOrCreateSigningKey(filepath.Join(b.TempDir(), "signing.key"))
			if err != nil {
				b.Fatal(err)
			}
			cp := &audit.Checkpointer{Chain: p.Chain, DB: p.DB, Key: signing, Every: batch, Interval: time.Hour}
			since := p.Clock.Now()
			recs := make([]*audit.Record, batch)
			for done := 0; done < size; done += batch {
				for i := range recs {
					n := done + i
					actor, room := keys.User(fmt.Sprintf("@user%d:hs", n%3000)), keys.Room(fmt.Sprintf("!room%d:hs", n%400))
					ev := fmt.Sprintf("$%043d", n)
					r := &audit.Record{Type: audit.TypeEventReceived, Outcome: audit.OutcomeSuccess, Actor: actor, Room: room, EventID: ev, EventType: "m.room.encrypted"}
					switch i % 100 {
					case 1: // a plaintext message, its decision, its redaction
						r.EventType = "m.room.message"
					case 2:
						r = &audit.Record{Type: audit.TypePolicyDecision, Outcome: audit.OutcomeSuccess, Actor: actor, Room: room, EventID: fmt.Sprintf("$%043d", n-1), Action: "redact", Detail: "plaintext"}
					case 3:
						r = &audit.Record{Type: audit.TypeJobApplied, Outcome: audit.OutcomeSuccess, Room: room, EventID: fmt.Sprintf("$%043d", n-2), Action: "redact", JobID: int64(n)}
					case 4:
						r = &audit.Record{Type: audit.TypeMembership, Outcome: audit.OutcomeSuccess, Actor: actor, Room: room, Action: "admit", Detail: "verified"}
					case 5:
						r = &audit.Record{Type: audit.TypeMembership, Outcome: audit.OutcomeSuccess, Actor: actor, Room: room, Action: "refuse", Detail: "not_verified"}
					case 6:
						r = &audit.Record{Type: audit.TypeSession, Outcome: audit.OutcomeSuccess, Action: "unverified_warned", Detail: actor, Count: 1}
					}
					recs[i] = r
				}
				if err := p.Chain.AppendTx(ctx, p.DB, recs...); err != nil {
					b.Fatal(err)
				}
				if _, err := cp.Once(ctx, true); err != nil {
					b.Fatal(err)
				}
				p.Clock.Advance(30 * 24 * time.Hour / (size / batch))
			}
			if dbType == "sqlite3" {
				// As the running service's background checkpointer leaves it.
				p.Exec(b, `PRAGMA wal_checkpoint(TRUNCATE)`)
			}
			cfg := &config.Config{}
			cfg.Homeserver.Software = "dendrite"
			cfg.Database.Type = dbType
			cfg.Compliance.BackupMaxAge = config.Duration(26 * time.Hour)
			cfg.Compliance.ExporterMaxLag = config.Duration(5 * time.Minute)
			in := Input{Config: cfg, DB: p.DB, Keys: keys, Public: signing.Pub, Policy: holder.Current(), PolicySince: since,
				Since: since, Until: p.Clock.Now()}
			var total int64
			b.Run("verify", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					var a AuditChain
					if err := verifyTrail(ctx, in, &a); err != nil || !a.Intact || a.CheckpointsChecked != size/batch {
						b.Fatalf("%+v %v", a, err)
					}
					total = a.Records
				}
				b.ReportMetric(float64(total), "records")
				b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/report")
			})
			b.Run("report", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					rep, err := Gather(ctx, in)
					if err != nil {
						b.Fatal(err)
					}
					ev := rep.Evidence
					if !ev.Audit.Intact || ev.Plaintext.Redacted != size/100 || ev.Plaintext.WindowSamples != size/100 ||
						ev.Membership.Admitted != size/100 || ev.Membership.Refused["not_verified"] != size/100 || len(ev.Days) < 30 {
						b.Fatalf("%+v", ev)
					}
					if err := rep.Write(io.Discard, "html"); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/report")
			})
		})
	}
}

// BenchmarkScanPlaintextAllowed is the report's pass over a trail where
// rooms allow plaintext: 100,000 unencrypted messages received within the
// hour, none redacted (their receipts are all kept, then pruned):
// go test -bench ScanPlaintextAllowed -benchtime 3x ./appservice/compliance
func BenchmarkScanPlaintextAllowed(b *testing.B) {
	const size, batch = 100_000, 10_000
	ctx := context.Background()
	p := apptest.New(b, "sqlite3")
	holder := p.UsePolicy(b, "version: 1\n")
	since := p.Clock.Now()
	recs := make([]*audit.Record, batch)
	for done := 0; done < size; done += batch {
		for i := range recs {
			recs[i] = &audit.Record{Type: audit.TypeEventReceived, Outcome: audit.OutcomeSuccess, Actor: "u_a", Room: "r_a",
				EventID: fmt.Sprintf("$%043d", done+i), EventType: "m.room.message"}
		}
		if err := p.Chain.AppendTx(ctx, p.DB, recs...); err != nil {
			b.Fatal(err)
		}
	}
	in := Input{Config: &config.Config{}, DB: p.DB, Keys: p.Chain.Keys(), Policy: holder.Current(), Since: since, Until: p.Clock.Now().Add(time.Hour)}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var ev Evidence
		if err := scanTrail(ctx, in, &ev); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(size*b.N)/b.Elapsed().Seconds(), "records/s")
}
