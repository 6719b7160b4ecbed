package enforce

import (
	"context"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// Rooms known from earlier events that policy wants encrypted are enrolled at
// start-up and on policy change, once per policy, in dry-run only on paper.
func TestSweepRooms(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := apptest.New(t, dbType)
			ctx := context.Background()
			for _, r := range []struct {
				id, creator, spaces string
				encrypted           bool
			}{
				{"!a:h", "@alice:h", "", false},
				{"!b:h", "@alice:h", "", true},
				{"!cafe:h", "@bob:h", "!cafeteria:h", false},
				{"!nocreator:h", "", "", false},
				// Claims the cafeteria space, which does not list it.
				{"!claims:h", "@mallory:h", "!cafeteria:h", false},
			} {
				if _, err := p.DB.W.Exec(`INSERT INTO room_state (room_id, creator, encrypted, spaces, updated_at) VALUES ($1, $2, $3, $4, 0)`, r.id, r.creator, r.encrypted, r.spaces); err != nil {
					t.Fatal(err)
				}
			}
			p.Exec(t, `INSERT INTO room_link (room_id, kind, value, verified_at) VALUES ('!cafe:h', 'space', '!cafeteria:h', 0)`)
			pol, err := policy.Parse("p.yaml", []byte("version: 1\nrooms:\n  - space: \"!cafeteria:h\"\n    encryption: optional\n"))
			if err != nil {
				t.Fatal(err)
			}
			n, err := SweepRooms(ctx, p.DB, p.Chain, pol)
			if err != nil || n != 2 {
				t.Fatalf("first sweep enrolled %d (%v), want 2 (!a:h, and !claims:h whose space link is not confirmed)", n, err)
			}
			if c := p.Count(t, `SELECT COUNT(*) FROM job WHERE kind = 'enable_encryption' AND payload LIKE '%!claims:h%'`); c != 1 {
				t.Fatalf("%d jobs for the room that only claims a looser space", c)
			}
			if c := p.Count(t, `SELECT COUNT(*) FROM job WHERE kind = 'enable_encryption' AND payload LIKE '%!a:h%' AND payload LIKE '%@alice:h%'`); c != 1 {
				t.Fatalf("%d jobs for !a:h as its creator", c)
			}
			if c := p.Count(t, `SELECT COUNT(*) FROM job WHERE kind = 'bot_join' AND payload LIKE '%!a:h%' AND payload LIKE '%@alice:h%'`); c != 1 {
				t.Fatalf("%d bot joins for !a:h invited by its creator", c)
			}
			if n, _ := SweepRooms(ctx, p.DB, p.Chain, pol); n != 0 {
				t.Fatalf("second sweep under the same policy enrolled %d", n)
			}
			dry, _ := policy.Parse("p.yaml", []byte("version: 1\ndefaults:\n  dry_run: true\n"))
			if n, _ := SweepRooms(ctx, p.DB, p.Chain, dry); n != 3 {
				t.Fatalf("sweep under a new policy enrolled %d, want 3 (!a:h, !claims:h and now !cafe:h)", n)
			}
			if c := p.Count(t, `SELECT COUNT(*) FROM job WHERE dry_run`); c != 6 {
				t.Fatalf("%d dry-run jobs, want 6 (encryption and bot join, three rooms)", c)
			}
			decisions := 0
			for _, r := range p.Records(t) {
				if r["type"] == "policy.decision" && r["detail"] == "encryption-sweep" {
					decisions++
				}
			}
			if decisions != 10 {
				t.Fatalf("%d sweep decisions audited, want 10 (two per enrolment, five enrolments)", decisions)
			}
		})
	}
}
