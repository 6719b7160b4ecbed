package bot

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/xml"
	"fmt"
	"io"
	"net/url"
	"strings"
	"testing"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/sqlstatestore"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

// The bot's stores set themselves up in the service's own PostgreSQL schema
// even when another schema of the same database already has mautrix's
// version tables (another service or bridge sharing the database).
func TestBotStoresBesideAnotherSchema(t *testing.T) {
	ctx := context.Background()
	// Someone else's schema, with both version tables and their compat column.
	otherURI := storetest.NewURI(t, "postgres")
	other, err := sql.Open("pgx", otherURI)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for _, q := range []string{
		`CREATE TABLE mx_version (version INTEGER, compat INTEGER)`,
		`CREATE TABLE crypto_version (version INTEGER, compat INTEGER)`,
	} {
		if _, err := other.Exec(q); err != nil {
			t.Fatal(err)
		}
	}

	db, uri := storetest.Open(t, "postgres")
	raw, dialect, err := db.OpenSide(uri)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if err := ownVersionTables(ctx, raw, dialect); err != nil {
		t.Fatal(err)
	}
	dbu, err := dbutil.NewWithDB(raw, dialect)
	if err != nil {
		t.Fatal(err)
	}
	if err := sqlstatestore.NewSQLStateStore(dbu, dbutil.NoopLogger, false).Upgrade(ctx); err != nil {
		t.Fatalf("state store: %v", err)
	}
	if err := crypto.NewSQLCryptoStore(dbu, dbutil.NoopLogger, "acct", "DEVICE", []byte("pickle key")).DB.Upgrade(ctx); err != nil {
		t.Fatalf("crypto store: %v", err)
	}
	// Both stores' tables are in our schema, and nothing was added to the other.
	var ours, theirs int
	if err := raw.QueryRow(`SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()`).Scan(&ours); err != nil {
		t.Fatal(err)
	}
	if err := other.QueryRow(`SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()`).Scan(&theirs); err != nil {
		t.Fatal(err)
	}
	if ours < 10 || theirs != 2 {
		t.Fatalf("tables: %d in our schema (want the stores' own), %d in the other (want its 2)", ours, theirs)
	}
	var version int
	if err := raw.QueryRow(`SELECT version FROM crypto_version`).Scan(&version); err != nil || version == 0 {
		t.Fatalf("crypto_version in our schema: %d, %v", version, err)
	}
}

// A user ID is its server's choice: a remote server may name a user
// @x"><img src=x onerror=alert(1)>:evil.example. Mentioned in a notice, it
// must stay text: one link to matrix.to, its href the URL-encoded ID, and no
// other markup.
func TestHostileUserIDInNoticeIsEscaped(t *testing.T) {
	for _, target := range []string{
		`@x"><img src=x onerror=alert(1)>:evil.example`,
		`@a'b<script>alert(1)</script>:evil.example`,
		`@plain:hospital.example`,
		`@q?x=1#frag&y:evil.example`,
	} {
		html := noticeHTML(target, "This room requires <b>end-to-end</b> encryption.")
		dec := xml.NewDecoder(strings.NewReader("<root>" + html + "</root>"))
		var elements []string
		var href, linkText string
		inLink := false
		for {
			tok, err := dec.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%q: formatted body is not well-formed: %v\n%s", target, err, html)
			}
			switch x := tok.(type) {
			case xml.StartElement:
				elements = append(elements, x.Name.Local)
				if x.Name.Local == "a" {
					inLink = true
					if len(x.Attr) != 1 || x.Attr[0].Name.Local != "href" {
						t.Fatalf("%q: link attributes %v", target, x.Attr)
					}
					href = x.Attr[0].Value
				}
			case xml.EndElement:
				if x.Name.Local == "a" {
					inLink = false
				}
			case xml.CharData:
				if inLink {
					linkText += string(x)
				}
			}
		}
		if fmt.Sprint(elements) != "[root a]" {
			t.Fatalf("%q: elements %v, want only the link", target, elements)
		}
		if linkText != target {
			t.Fatalf("%q: link text %q", target, linkText)
		}
		u, err := url.Parse(href)
		if err != nil || u.Host != "matrix.to" || u.Path != "/" || u.Fragment != "/"+target {
			t.Fatalf("%q: href %q (fragment %q)", target, href, u.Fragment)
		}
	}
}

// The bot joins rooms it is invited to only by users of its own server and
// by administrators: another server's users cannot flood it with rooms.
func TestHostileRemoteInvitesAreIgnored(t *testing.T) {
	b := New(Options{UserID: "@hipaa:hospital.example", Admin: func(u string) bool { return u == "@ciso:partner.example" }})
	for inviter, want := range map[string]bool{
		"@alice:hospital.example":         true,
		"@ciso:partner.example":           true,
		"@mallory:evil.example":           false,
		"@mallory:hospital.example.evil":  false,
		"@mallory:evil.example:8448":      false,
		"":                                false,
		"not a user id":                   false,
		"@x:hospital.example:hospital.ex": false,
	} {
		if got := b.AcceptsInvite(inviter); got != want {
			t.Errorf("invite from %q accepted: %v, want %v", inviter, got, want)
		}
	}
}

// The bot's cross-signing keys are made once and kept sealed: a second
// start gets the same keys, the stored row holds no seed in the clear, and
// a store opened with another pickle key (or a row moved to another bot)
// does not open.
func TestCrossSigningSeedsSealed(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			ctx := context.Background()
			db, _ := storetest.Open(t, dbType)
			b := New(Options{DB: db, UserID: "@hipaa:hs", PickleKey: []byte("0123456789abcdef0123456789abcdef")})
			seeds, ident, err := b.loadOrMakeSeeds(ctx)
			if err != nil || ident.MasterKey == "" || ident.Published {
				t.Fatalf("first start: %+v %v", ident, err)
			}
			again, ident2, err := b.loadOrMakeSeeds(ctx)
			if err != nil || ident2.MasterKey != ident.MasterKey || string(again.MasterKey) != string(seeds.MasterKey) {
				t.Fatalf("second start made other keys: %+v %v", ident2, err)
			}
			var sealed string
			if err := db.R.QueryRow(`SELECT sealed FROM bot_cross_signing`).Scan(&sealed); err != nil {
				t.Fatal(err)
			}
			for _, seed := range [][]byte{seeds.MasterKey, seeds.SelfSigningKey, seeds.UserSigningKey} {
				if strings.Contains(sealed, base64.RawURLEncoding.EncodeToString(seed)) || strings.Contains(sealed, base64.RawStdEncoding.EncodeToString(seed)) {
					t.Fatal("a seed is stored in the clear")
				}
			}
			other := New(Options{DB: db, UserID: "@hipaa:hs", PickleKey: []byte("another key, another deployment!")})
			if _, _, err := other.loadOrMakeSeeds(ctx); err == nil {
				t.Fatal("the seeds opened with another pickle key")
			}
			if err := b.open(sealed, &crypto.CrossSigningSeeds{}); err != nil {
				t.Fatal(err)
			}
			moved := New(Options{DB: db, UserID: "@other:hs", PickleKey: b.opts.PickleKey})
			if err := moved.open(sealed, &crypto.CrossSigningSeeds{}); err == nil {
				t.Fatal("the seeds opened as another bot's")
			}
		})
	}
}
