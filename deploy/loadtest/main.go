// Command loadtest measures transaction ingest the way a homeserver drives an
// application service: real transactions PUT over HTTP on loopback, one in
// flight at a time. It runs matrix-hipaa (durable: SQLite with
// synchronous=FULL, or PostgreSQL) and, side by side in the same run, a
// minimal mautrix appservice that acknowledges without storing anything.
//
//	go run -tags goolm ./deploy/loadtest -events 100 -duration 10s -rounds 3
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/appservice"

	hipaa "github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/assembly"
	"github.com/matrix-hipaa/matrix-hipaa/config"
)

const hsToken = "loadtest_hs_token_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJK"

func main() {
	events := flag.Int("events", 100, "events per transaction")
	duration := flag.Duration("duration", 10*time.Second, "measuring time per target per round")
	rounds := flag.Int("rounds", 3, "rounds; targets alternate within each round")
	dbType := flag.String("db", "sqlite3", "matrix-hipaa database: sqlite3 or postgres")
	pgURL := flag.String("pg", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL URL for -db postgres (its tables are dropped first)")
	targets := flag.String("targets", "mautrix,matrix-hipaa", "comma-separated targets")
	prefill := flag.Int("prefill", 0, "after the rounds, store this many events in matrix-hipaa's database and measure again")
	dir := flag.String("dir", "", "data folder (default: a temp folder on the same disk as /tmp)")
	fsync := flag.Bool("fsync", true, "measure this disk's fsync rate first")
	policyFile := flag.String("policy", "", "matrix-hipaa's policy file (default: none, the strict built-in values, which keep messages forever)")
	fullDir := flag.String("full-dir", "", "also measure, as target matrix-hipaa-full, a matrix-hipaa on the SQLite database left in this folder by an earlier -prefill run")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run here")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		check(err)
		check(pprof.StartCPUProfile(f))
		defer pprof.StopCPUProfile()
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "matrix-hipaa-loadtest")
		check(err)
		defer os.RemoveAll(d)
		*dir = d
	}
	if *fsync {
		fmt.Printf("disk fsync rate in %s: %.0f/s appending, %.0f/s overwriting (4 KiB write + fdatasync, 3 s each)\n", *dir, fsyncRate(*dir, false), fsyncRate(*dir, true))
	}
	if *dbType == "postgres" {
		dropTables(*pgURL)
	}
	ours := startOurs(*dir, *dbType, *pgURL, *policyFile, false)
	defer ours.stop()
	peer := startPeer()
	defer peer.stop()
	servers := map[string]*target{"matrix-hipaa": ours, "mautrix": peer}
	if strings.Contains(*targets, "matrix-hipaa-tls") {
		// The same service on its own database, serving HTTPS.
		tlsDir := filepath.Join(*dir, "tls")
		check(os.MkdirAll(tlsDir, 0o700))
		if *dbType == "postgres" {
			check(fmt.Errorf("target matrix-hipaa-tls runs on SQLite only"))
		}
		withTLS := startOurs(tlsDir, "sqlite3", "", *policyFile, true)
		defer withTLS.stop()
		servers["matrix-hipaa-tls"] = withTLS
	}
	if *fullDir != "" {
		full := startOurs(*fullDir, "sqlite3", "", *policyFile, false)
		defer full.stop()
		var n int64
		full.svc.DB.R.QueryRow(`SELECT COUNT(*) FROM inbox`).Scan(&n)
		fmt.Printf("matrix-hipaa-full: database in %s holds %d events\n", *fullDir, n)
		servers["matrix-hipaa-full"] = full
	}
	fmt.Printf("%d events per transaction, one transaction in flight, %s per run, database %s\n", *events, *duration, *dbType)
	fmt.Printf("%-6s %-14s %10s %10s %9s %9s %9s %10s\n", "round", "target", "txns", "events/s", "p50 ms", "p99 ms", "max ms", "behind")
	gen := newGenerator(*events)
	results := map[string][]float64{}
	for r := 1; r <= *rounds; r++ {
		for _, name := range strings.Split(*targets, ",") {
			res := drive(servers[name], gen, *duration)
			results[name] = append(results[name], res.rate)
			fmt.Printf("%-6d %-14s %10d %10.0f %9.2f %9.2f %9.2f %10s\n", r, name, res.txns, res.rate, res.p50, res.p99, res.max, settle(servers[name].svc))
		}
	}
	summarize(results)
	if e, f := median(results["matrix-hipaa"]), median(results["matrix-hipaa-full"]); e > 0 && f > 0 {
		fmt.Printf("matrix-hipaa-full: %.0f%% of the empty database's rate\n", 100*f/e)
	}
	if *prefill > 0 {
		fmt.Printf("\nstoring %d more events in matrix-hipaa's database…\n", *prefill)
		start := time.Now()
		fill(ours.svc, *prefill)
		fmt.Printf("stored in %s; measuring again\n", time.Since(start).Round(time.Second))
		after := map[string][]float64{}
		for r := 1; r <= *rounds; r++ {
			for _, name := range strings.Split(*targets, ",") {
				res := drive(servers[name], gen, *duration)
				after[name] = append(after[name], res.rate)
				fmt.Printf("%-6d %-14s %10d %10.0f %9.2f %9.2f %9.2f %10s\n", r, name+"+full", res.txns, res.rate, res.p50, res.p99, res.max, settle(servers[name].svc))
			}
		}
		summarize(after)
		if e, f := median(results["matrix-hipaa"]), median(after["matrix-hipaa"]); e > 0 {
			fmt.Printf("matrix-hipaa with a full database: %.0f%% of its empty-database rate\n", 100*f/e)
		}
	}
}

func summarize(results map[string][]float64) {
	ours, peer := median(results["matrix-hipaa"]), median(results["mautrix"])
	if ours > 0 && peer > 0 {
		fmt.Printf("median events/s: matrix-hipaa %.0f, mautrix peer %.0f: ratio %.2f\n", ours, peer, ours/peer)
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

type target struct {
	url    string
	svc    *hipaa.Service
	client *http.Client // nil: plain HTTP
	stop   func()
}

func listen() net.Listener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	return l
}

// startOurs runs the whole matrix-hipaa service (inbox, dispatcher, job
// runner), with useTLS over HTTPS with a certificate made here.
func startOurs(dir, dbType, pgURL, policyFile string, useTLS bool) *target {
	l := listen()
	addr := l.Addr().String()
	l.Close()
	db := "database:\n  type: sqlite3\n  uri: hipaa.db\n"
	if dbType == "postgres" {
		db = fmt.Sprintf("database:\n  type: postgres\n  uri: %q\n", pgURL)
	}
	pol := ""
	if policyFile != "" {
		abs, err := filepath.Abs(policyFile)
		check(err)
		pol = fmt.Sprintf("policy: %q\n", abs)
	}
	scheme, tlsKeys, client := "http", "", (*http.Client)(nil)
	if useTLS {
		cert, key, pool := selfSigned(dir)
		scheme, tlsKeys = "https", fmt.Sprintf("  tls_cert_file: %q\n  tls_key_file: %q\n", cert, key)
		client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, TLSClientConfig: &tls.Config{RootCAs: pool}}}
	}
	cfgText := fmt.Sprintf(`homeserver:
  address: http://127.0.0.1:1
  domain: loadtest.example
appservice:
  listen: %s
  url: %s://%s
  as_token: %q
  hs_token: %q
%s%s%slogging:
  level: warn
`, addr, scheme, addr, hsToken+"as", hsToken, tlsKeys, db, pol)
	path := filepath.Join(dir, "config.yaml")
	check(os.WriteFile(path, []byte(cfgText), 0o600))
	cfg, err := config.Load(path)
	check(err)
	ctx, cancel := context.WithCancel(context.Background())
	// There is no homeserver, so the bot's login and room lookups fail and
	// retry; their warnings go to a file, not into the table of results.
	logFile, err := os.OpenFile(filepath.Join(dir, "service.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	check(err)
	svc, err := hipaa.New(ctx, cfg, zerolog.New(logFile).Level(zerolog.WarnLevel), time.Now)
	check(err)
	check(assembly.AddFeatures(svc)) // every feature, as the service runs them
	done := make(chan struct{})
	go func() { check(svc.Run(ctx)); close(done) }()
	waitListen(addr)
	return &target{url: scheme + "://" + addr, svc: svc, client: client, stop: func() { cancel(); <-done; logFile.Close() }}
}

// startPeer runs mautrix's own appservice transaction handler: it parses the
// transaction, dedupes its ID in memory and hands events to a channel, which
// we drain. Nothing is stored.
func startPeer() *target {
	as := appservice.Create()
	as.Registration = &appservice.Registration{ServerToken: hsToken, AppToken: hsToken + "as"}
	go func() {
		for range as.Events {
		}
	}()
	l := listen()
	srv := &http.Server{Handler: as.Router}
	go srv.Serve(l)
	return &target{url: "http://" + l.Addr().String(), stop: func() { srv.Close() }}
}

func waitListen(addr string) {
	for i := 0; i < 500; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	check(fmt.Errorf("nothing listening on %s", addr))
}

// generator makes realistic transactions: mostly encrypted messages from a
// few hundred users across a few dozen rooms, with some membership and state.
type generator struct {
	n    int
	seq  int
	salt string
}

func newGenerator(n int) *generator {
	b := make([]byte, 6)
	rand.Read(b)
	return &generator{n: n, salt: base64.RawURLEncoding.EncodeToString(b)}
}

// payload fills event IDs and ciphertext: they need to differ, not to be
// secret, and crypto/rand made the generator a third of the CPU profile.
var payload = func() *mrand.ChaCha8 {
	var seed [32]byte
	rand.Read(seed[:])
	return mrand.NewChaCha8(seed)
}()

func randB64(n int) string {
	b := make([]byte, n)
	payload.Read(b)
	return base64.RawStdEncoding.EncodeToString(b)
}

// appendEvent writes one event's JSON by hand: the generator must cost
// little, as it shares the machine with the servers it measures.
func (g *generator) appendEvent(b []byte) []byte {
	g.seq++
	sender := fmt.Sprintf("@user%03d:loadtest.example", g.seq%311)
	b = fmt.Appendf(b, `{"event_id":"$%s%s%08d","room_id":"!room%02d:loadtest.example","sender":%q,"origin_server_ts":%d,"unsigned":{"age":12},`,
		randB64(24), g.salt, g.seq, g.seq%37, sender, time.Now().UnixMilli())
	switch g.seq % 20 {
	case 0:
		b = fmt.Appendf(b, `"type":"m.room.member","state_key":%q,"content":{"membership":"join","displayname":"Staff"}}`, sender)
	case 1:
		b = append(b, `"type":"m.reaction","content":{"m.relates_to":{"rel_type":"m.annotation","event_id":"$x","key":"👍"}}}`...)
	default:
		b = fmt.Appendf(b, `"type":"m.room.encrypted","content":{"algorithm":"m.megolm.v1.aes-sha2","ciphertext":"%s","device_id":"ABCDEFGHIJ","sender_key":"%s","session_id":"%s"}}`,
			randB64(200+g.seq%400), randB64(32), randB64(32))
	}
	return b
}

func (g *generator) txn() []byte {
	b := make([]byte, 0, 900*g.n+16)
	b = append(b, `{"events":[`...)
	for i := 0; i < g.n; i++ {
		if i > 0 {
			b = append(b, ',')
		}
		b = g.appendEvent(b)
	}
	return append(b, "]}"...)
}

type result struct {
	txns          int
	rate          float64
	p50, p99, max float64
}

// drive sends transactions one at a time for d and reports throughput and
// acknowledgement latency. Every transaction carries new events (a re-sent
// event is a duplicate the inbox skips cheaply, which would flatter it).
// Bodies are made before the clock starts, up to 256 MiB of them, so the
// generator takes no CPU from the target while it is measured; should a run
// use them all, more are made on the spot and that time is left out.
func drive(tg *target, g *generator, d time.Duration) result {
	url := tg.url
	size := len(g.txn())
	bodies := make([][]byte, max(64, min(200_000, (256<<20)/size)))
	for i := range bodies {
		bodies[i] = g.txn()
	}
	var making time.Duration
	client := tg.client
	if client == nil {
		client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	}
	var lat []time.Duration
	start := time.Now()
	n := 0
	for time.Since(start)-making < d {
		var body []byte
		if n < len(bodies) {
			body, bodies[n] = bodies[n], nil
		} else {
			t := time.Now()
			body = g.txn()
			making += time.Since(t)
		}
		req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/_matrix/app/v1/transactions/lt%s%d", url, g.salt, n), bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+hsToken)
		req.Header.Set("Content-Type", "application/json")
		t0 := time.Now()
		resp, err := client.Do(req)
		check(err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			check(fmt.Errorf("%s answered %d", url, resp.StatusCode))
		}
		lat = append(lat, time.Since(t0))
		n++
	}
	elapsed := time.Since(start) - making
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return result{
		txns: n, rate: float64(n*g.n) / elapsed.Seconds(),
		p50: ms(lat[len(lat)/2]), p99: ms(lat[len(lat)*99/100]), max: ms(lat[len(lat)-1]),
	}
}

// fill stores events straight through the inbox in large transactions.
func fill(svc *hipaa.Service, n int) {
	g := newGenerator(1000)
	ctx := context.Background()
	for done := 0; done < n; {
		batch := min(1000, n-done)
		g.n = batch
		txn, err := hipaa.ParseTransaction(g.txn())
		check(err)
		_, err = svc.Inbox.Store(ctx, fmt.Sprintf("fill%s%d", g.salt, done), txn.Events)
		check(err)
		done += batch
		if done%500000 == 0 {
			fmt.Printf("  %d stored\n", done)
		}
	}
	settle(svc)
}

// settle reports how many stored events the dispatcher had yet to decide on
// when a run ended ("behind", and how long it took to catch up), then waits
// until it has caught up, so the next measurement is of ingest alone. The
// mautrix peer has no dispatcher: "-".
func settle(svc *hipaa.Service) string {
	if svc == nil {
		return "-"
	}
	behind := func() int64 {
		var cursor, head int64
		svc.DB.R.QueryRow(`SELECT seq FROM dispatch_cursor`).Scan(&cursor)
		svc.DB.R.QueryRow(`SELECT COALESCE(MAX(seq), 0) FROM inbox`).Scan(&head)
		return head - cursor
	}
	start, n := time.Now(), behind()
	for behind() > 0 {
		time.Sleep(50 * time.Millisecond)
	}
	if n == 0 {
		return "0"
	}
	return fmt.Sprintf("%d/%.1fs", n, time.Since(start).Seconds())
}

// fsyncRate is how many 4 KiB writes, each followed by fdatasync, the disk
// takes per second: appended to a growing file (each allocates a block), or
// overwriting one that already has its blocks, as a rewound WAL does.
func fsyncRate(dir string, overwrite bool) float64 {
	f, err := os.CreateTemp(dir, "fsync")
	check(err)
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	const span = 4096 * 4096
	if overwrite {
		check(f.Truncate(0))
		_, err := f.Write(make([]byte, span))
		check(err)
		check(f.Sync())
	}
	start := time.Now()
	n := 0
	for time.Since(start) < 3*time.Second {
		var err error
		if overwrite {
			_, err = f.WriteAt(buf, int64(n*4096)%span)
		} else {
			_, err = f.Write(buf)
		}
		check(err)
		check(syscall.Fdatasync(int(f.Fd())))
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

func dropTables(url string) {
	// The store migrates a fresh schema; start each run from empty. Every
	// table in the URL's schema goes, so tables added by later migrations do
	// not survive into the next run.
	db, err := openPG(url)
	check(err)
	defer db.Close()
	rows, err := db.Query(`SELECT tablename FROM pg_tables WHERE schemaname = current_schema()`)
	check(err)
	var tables []string
	for rows.Next() {
		var t string
		check(rows.Scan(&t))
		tables = append(tables, t)
	}
	check(rows.Err())
	rows.Close()
	for _, t := range tables {
		_, err := db.Exec(`DROP TABLE IF EXISTS "` + t + `" CASCADE`)
		check(err)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key into dir and
// returns their paths and a pool that trusts the certificate.
func selfSigned(dir string) (string, string, *x509.CertPool) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	check(err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	check(err)
	kb, err := x509.MarshalECPrivateKey(k)
	check(err)
	cert, key := filepath.Join(dir, "tls.pem"), filepath.Join(dir, "tls.key")
	check(os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	check(os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600))
	parsed, err := x509.ParseCertificate(der)
	check(err)
	pool := x509.NewCertPool()
	pool.AddCert(parsed)
	return cert, key, pool
}
