// Package compliance is the evidence an auditor asks for: each HIPAA
// safeguard the service touches, mapped to what the running deployment
// shows (its audit trail, its database, its homeserver), with findings
// ranked by what to fix first. Counts, times and hashes only: never a name,
// a message or a pseudonym.
package compliance

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"errors"
	"maps"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/enforce"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/identity"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/pushers"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// Input is what a report is made from.
type Input struct {
	Config *config.Config
	DB     *store.DB
	// Keys needs only the chain key: the report verifies the trail.
	Keys *audit.Keys
	// Public is the checkpoint key; FileCheckpoints the checkpoint file's.
	Public          ed25519.PublicKey
	FileCheckpoints []audit.Checkpoint
	// Policy is the policy in force, since PolicySince; PolicyFileRefused
	// says the policy file on disk does not load (the service keeps the
	// last good one).
	Policy            *policy.Policy
	PolicySince       time.Time
	PolicyFileRefused bool
	// Homeserver says what the homeserver runs (nil: not asked, a report
	// on a copy of the database, say).
	Homeserver func(context.Context) (homeserver.Software, error)
	// Since and Until bound the period the counts cover.
	Since, Until time.Time
}

// Report is the whole report; every format renders it.
type Report struct {
	Generated  time.Time   `json:"generated"`
	Since      time.Time   `json:"since"`
	Until      time.Time   `json:"until"`
	Deployment Deployment  `json:"deployment"`
	Evidence   Evidence    `json:"evidence"`
	Safeguards []Safeguard `json:"safeguards"`
	Findings   []Finding   `json:"findings"`
}

// Deployment is what runs: the homeserver against the hospital's minimum,
// the database, the policy.
type Deployment struct {
	HomeserverSoftware   string `json:"homeserver_software"` // configured: synapse, dendrite, generic
	HomeserverName       string `json:"homeserver_name,omitempty"`
	HomeserverVersion    string `json:"homeserver_version,omitempty"`
	HomeserverError      string `json:"homeserver_error,omitempty"`
	HomeserverMinVersion string `json:"homeserver_min_version,omitempty"`
	// HomeserverPatched: the version is at least the minimum (nil: not
	// compared, no minimum or no version).
	HomeserverPatched *bool     `json:"homeserver_patched,omitempty"`
	Database          string    `json:"database"`
	PolicyHash        string    `json:"policy_hash"`
	PolicySince       time.Time `json:"policy_since"`
	PolicyFileRefused bool      `json:"policy_file_refused"`
}

// Evidence is every measure, by area.
type Evidence struct {
	Rooms      Rooms       `json:"rooms"`
	Plaintext  Plaintext   `json:"plaintext"`
	Membership Membership  `json:"membership"`
	Sessions   Sessions    `json:"sessions"`
	Wipes      Wipes       `json:"wipes"`
	Holds      Holds       `json:"holds"`
	Audit      AuditChain  `json:"audit"`
	Exporters  []Exporter  `json:"exporters"`
	Backup     Backup      `json:"backup"`
	Pushers    Pushers     `json:"pushers"`
	Jobs       Jobs        `json:"jobs"`
	Archive    Archive     `json:"archive"`
	Training   Training    `json:"training"`
	Emergency  Emergency   `json:"emergency_access"`
	Days       []DayCounts `json:"days"`
}

// Training is where the rules stand: whether policy sends them, and of the
// people sent them, how many acknowledged (now), and what the period saw.
type Training struct {
	On             bool  `json:"on"`
	Sent           int64 `json:"sent"`
	Acknowledged   int64 `json:"acknowledged"`
	Unacknowledged int64 `json:"unacknowledged"`
	SentInPeriod   int64 `json:"sent_in_period"`
	AckedInPeriod  int64 `json:"acknowledged_in_period"`
}

// Emergency is break the glass in the period: granted, refused by reason,
// ended (with the messages sent under it), and how many are open now.
type Emergency struct {
	Granted  int64            `json:"granted"`
	Refused  map[string]int64 `json:"refused"`
	Ended    int64            `json:"ended"`
	Messages int64            `json:"messages"`
	Open     int64            `json:"open"`
}

// Rooms are the rooms the service knows and how policy stands in them.
type Rooms struct {
	Known              int `json:"known"`
	EncryptionRequired int `json:"encryption_required"`
	Encrypted          int `json:"encrypted"`
	Unencrypted        int `json:"unencrypted"` // required and not in force
	NeedAttention      int `json:"need_attention"`
	DryRun             int `json:"dry_run"`
}

// Plaintext is what was sent unencrypted where encryption is required,
// and how fast the service took it down (from its receipt of the event to
// the homeserver's acknowledgement of the redaction).
type Plaintext struct {
	Redacted      int64 `json:"redacted"`
	WouldRedact   int64 `json:"would_redact"` // dry-run rooms
	WindowSamples int   `json:"window_samples"`
	WindowP50Ms   int64 `json:"window_p50_ms"`
	WindowP99Ms   int64 `json:"window_p99_ms"`
	WindowMaxMs   int64 `json:"window_max_ms"`
}

// Membership is the verified-clinician gate's decisions, by reason code.
type Membership struct {
	Admitted int64            `json:"admitted"`
	Refused  map[string]int64 `json:"refused"`
	Removed  map[string]int64 `json:"removed"`
}

// Sessions counts sessions the service acted on (each record's count).
type Sessions struct {
	UnverifiedWarned    int64 `json:"unverified_warned"`
	UnverifiedSignedOut int64 `json:"unverified_signed_out"`
	IdleLogoffs         int64 `json:"idle_logoffs"`
	IdleDeviceLogoffs   int64 `json:"idle_device_logoffs"`
}

// Wipes are remote wipes asked for in the period and how they ended:
// confirmed (every session gone, as the homeserver says), failed, or not
// ended yet.
type Wipes struct {
	Requested   int64 `json:"requested"`
	Confirmed   int64 `json:"confirmed"`
	Failed      int64 `json:"failed"`
	Unconfirmed int64 `json:"unconfirmed"`
}

// Holds are legal holds: standing now, placed and released in the period.
type Holds struct {
	Standing int64 `json:"standing"`
	Placed   int64 `json:"placed"`
	Released int64 `json:"released"`
}

// AuditChain is the trail's verification, done for the report.
type AuditChain struct {
	Intact             bool      `json:"intact"`
	Records            int64     `json:"records"`
	Head               int64     `json:"head"`
	BrokenAt           int64     `json:"broken_at,omitempty"`
	Break              string    `json:"break,omitempty"`
	CheckpointSeq      int64     `json:"checkpoint_seq"`
	CheckpointsChecked int       `json:"checkpoints_checked"`
	CheckpointTime     time.Time `json:"checkpoint_time,omitzero"`
	KeyID              string    `json:"key_id"`
	PublicKey          string    `json:"public_key"`
	Reads              int64     `json:"reads"` // audit.read records in the period: the trail's own review
}

// Exporter is one audit exporter's position.
type Exporter struct {
	Name         string    `json:"name"`
	Behind       int64     `json:"behind"`
	LastDelivery time.Time `json:"last_delivery,omitzero"`
	LagSeconds   int64     `json:"lag_seconds"`
	Lagging      bool      `json:"lagging"`
}

// Backup is the newest backup the trail records (SQLite: `matrix-hipaa
// backup`; PostgreSQL's backups are the database's own, outside its view).
type Backup struct {
	Applicable    bool      `json:"applicable"`
	Last          time.Time `json:"last,omitzero"`
	AgeSeconds    int64     `json:"age_seconds"`
	MaxAgeSeconds int64     `json:"max_age_seconds"`
}

// Pushers are users whose push notifications carry message content (their
// lock screen may show it), as Synapse's admin API lists them.
type Pushers struct {
	Checked     bool      `json:"checked"`
	Why         string    `json:"why,omitempty"` // why not checked
	Users       int       `json:"users"`
	WithContent int       `json:"with_content"`
	CheckedAt   time.Time `json:"checked_at,omitzero"`
}

// Jobs are actions that failed for good (in the period) and are waiting.
type Jobs struct {
	Failed  int64 `json:"failed"`
	Pending int64 `json:"pending"`
}

// Archive is what the archive could not keep, and what it gave out.
type Archive struct {
	Missing int64 `json:"missing"`
	Exports int64 `json:"exports"`
}

// DayCounts is one bucket of the charts' series (Date its first day).
type DayCounts struct {
	Date      string `json:"date"`
	Plaintext int64  `json:"plaintext"`
	Refused   int64  `json:"refused"`
	Signouts  int64  `json:"signouts"`
}

// Gather makes the report.
func Gather(ctx context.Context, in Input) (*Report, error) {
	r := &Report{Generated: in.Until.UTC(), Since: in.Since.UTC(), Until: in.Until.UTC()}
	cfg := in.Config
	r.Deployment = Deployment{
		HomeserverSoftware: cfg.Homeserver.Software, HomeserverMinVersion: cfg.Compliance.HomeserverMinVersion,
		Database: cfg.Database.Type, PolicyHash: in.Policy.Hash, PolicySince: in.PolicySince.UTC(), PolicyFileRefused: in.PolicyFileRefused,
	}
	if in.Homeserver == nil {
		r.Deployment.HomeserverError = "not asked (offline)"
	} else {
		sw, err := in.Homeserver(ctx)
		if err != nil {
			r.Deployment.HomeserverError = appservice.SafeError(err)
		} else {
			r.Deployment.HomeserverName, r.Deployment.HomeserverVersion = sw.Name, sw.Version
			if min := cfg.Compliance.HomeserverMinVersion; min != "" {
				ok := AtLeast(sw.Version, min)
				r.Deployment.HomeserverPatched = &ok
			}
		}
	}
	ev := &r.Evidence
	if err := gatherRooms(ctx, in, ev); err != nil {
		return nil, err
	}
	if err := scanTrail(ctx, in, ev); err != nil {
		return nil, err
	}
	if err := gatherState(ctx, in, ev); err != nil {
		return nil, err
	}
	if err := verifyTrail(ctx, in, &ev.Audit); err != nil {
		return nil, err
	}
	r.Safeguards = safeguards(r)
	r.Findings = findings(r)
	return r, nil
}

func gatherRooms(ctx context.Context, in Input, ev *Evidence) error {
	rooms, err := enforce.ListRooms(ctx, in.DB, in.Policy)
	if err != nil {
		return err
	}
	for _, rm := range rooms {
		ev.Rooms.Known++
		if rm.EncryptionRequired {
			ev.Rooms.EncryptionRequired++
		}
		if rm.Encrypted {
			ev.Rooms.Encrypted++
		}
		if rm.Unenforced() {
			ev.Rooms.Unencrypted++
		}
		if rm.NeedsAttention() {
			ev.Rooms.NeedAttention++
		}
		if rm.DryRun {
			ev.Rooms.DryRun++
		}
	}
	return nil
}

// scanTrail counts the period's records, in one pass over them.
func scanTrail(ctx context.Context, in Input, ev *Evidence) error {
	ev.Membership.Refused, ev.Membership.Removed = map[string]int64{}, map[string]int64{}
	ev.Emergency.Refused = map[string]int64{}
	days := newBuckets(in.Since, in.Until)
	// Receipt times of unencrypted messages, and the ones a rule redacted.
	// Rooms that allow plaintext can send many: a receipt the dispatcher
	// has not decided on within decideWithin never will be, so old ones
	// are dropped and the map stays small.
	received := map[string]int64{}
	pruneAt := maxPending
	redacted := map[string]int64{}
	var windows []int64
	wipes := map[int64]string{}
	_, err := audit.Each(ctx, in.DB, audit.Range{Since: in.Since, Until: in.Until}, func(st *audit.Stored) error {
		rec, err := st.Fields()
		if err != nil {
			return err
		}
		switch rec.Type {
		case audit.TypeEventReceived:
			if rec.EventType == "m.room.message" || rec.EventType == "m.sticker" {
				if len(received) >= pruneAt {
					maps.DeleteFunc(received, func(_ string, ts int64) bool { return ts < st.TS-decideWithin.Milliseconds() })
					// An hour busier than maxPending prunes again only once
					// the map has doubled: a scan per receipt otherwise.
					pruneAt = max(maxPending, 2*len(received))
				}
				received[rec.EventID] = st.TS
			}
		case audit.TypePolicyDecision:
			if rec.Action != string(policy.ActRedact) || (rec.Detail != "plaintext" && rec.Detail != "attachments") {
				break
			}
			if rec.Outcome == audit.OutcomeWould {
				ev.Plaintext.WouldRedact++
				break
			}
			ev.Plaintext.Redacted++
			days.at(st.TS).Plaintext++
			if t, ok := received[rec.EventID]; ok {
				redacted[rec.EventID] = t
			}
		case audit.TypeJobApplied:
			if t, ok := redacted[rec.EventID]; ok && rec.Action == string(policy.ActRedact) {
				windows = append(windows, st.TS-t)
				delete(redacted, rec.EventID)
				delete(received, rec.EventID)
			}
		case audit.TypeJobFailed:
			ev.Jobs.Failed++
		case audit.TypeMembership:
			switch rec.Action {
			case "admit":
				ev.Membership.Admitted++
			case "refuse":
				ev.Membership.Refused[reasonCode(rec.Detail)]++
				days.at(st.TS).Refused++
			case "remove":
				ev.Membership.Removed[reasonCode(rec.Detail)]++
			}
		case audit.TypeSession:
			n := max(rec.Count, 1)
			switch rec.Action {
			case "unverified_warned":
				ev.Sessions.UnverifiedWarned += n
			case "unverified_signed_out":
				ev.Sessions.UnverifiedSignedOut += n
				days.at(st.TS).Signouts += n
			case "idle_logoff":
				ev.Sessions.IdleLogoffs += n
				days.at(st.TS).Signouts += n
			case "idle_device_logoff":
				ev.Sessions.IdleDeviceLogoffs += n
				days.at(st.TS).Signouts += n
			}
		case audit.TypeWipe:
			switch rec.Action {
			case "requested":
				if _, seen := wipes[rec.JobID]; !seen {
					wipes[rec.JobID] = "requested"
				}
			case "done", "failed":
				if _, asked := wipes[rec.JobID]; asked {
					wipes[rec.JobID] = rec.Action
				}
			}
		case audit.TypeHold:
			if rec.Outcome != audit.OutcomeSuccess {
				break
			}
			switch rec.Action {
			case "place":
				ev.Holds.Placed++
			case "release":
				ev.Holds.Released++
			}
		case audit.TypeAuditRead:
			ev.Audit.Reads++
		case audit.TypeTraining:
			switch rec.Action {
			case "sent":
				ev.Training.SentInPeriod++
			case "acknowledged":
				ev.Training.AckedInPeriod++
			}
		case audit.TypeEmergencyAccess:
			switch rec.Action {
			case "granted":
				ev.Emergency.Granted++
			case "refused":
				ev.Emergency.Refused[reasonCode(rec.Detail)]++
			case "ended":
				ev.Emergency.Ended++
				ev.Emergency.Messages += rec.Count
			}
		case audit.TypeArchive:
			switch rec.Action {
			case "missing":
				ev.Archive.Missing++
			case "export":
				if rec.Outcome == audit.OutcomeSuccess {
					ev.Archive.Exports++
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, state := range wipes {
		ev.Wipes.Requested++
		switch state {
		case "done":
			ev.Wipes.Confirmed++
		case "failed":
			ev.Wipes.Failed++
		default:
			ev.Wipes.Unconfirmed++
		}
	}
	sort.Slice(windows, func(i, j int) bool { return windows[i] < windows[j] })
	ev.Plaintext.WindowSamples = len(windows)
	if len(windows) > 0 {
		ev.Plaintext.WindowP50Ms = percentile(windows, 50)
		ev.Plaintext.WindowP99Ms = percentile(windows, 99)
		ev.Plaintext.WindowMaxMs = windows[len(windows)-1]
	}
	ev.Days = days.list
	return nil
}

// decideWithin is far longer than the dispatcher takes to decide on an
// event it stored; maxPending is when receipts older than that are first
// dropped.
const (
	decideWithin = time.Hour
	maxPending   = 10000
)

// reasonCode keeps a refusal's reason to the gate's closed vocabulary.
func reasonCode(detail string) string {
	for _, c := range detail {
		if !(c >= 'a' && c <= 'z' || c == '_') {
			return "other"
		}
	}
	if detail == "" {
		return "other"
	}
	return detail
}

// percentile is the nearest-rank p-th percentile of sorted values.
func percentile(sorted []int64, p int) int64 {
	i := (len(sorted)*p + 99) / 100
	return sorted[max(i-1, 0)]
}

// buckets are the charts' series: about a month of bars, each a day or,
// over a long period, several.
type buckets struct {
	start time.Time
	width time.Duration
	list  []DayCounts
}

func newBuckets(since, until time.Time) *buckets {
	start := since.UTC().Truncate(24 * time.Hour)
	days := int(until.Sub(start)/(24*time.Hour)) + 1
	per := max((days+30)/31, 1)
	b := &buckets{start: start, width: time.Duration(per) * 24 * time.Hour}
	for t := start; !t.After(until); t = t.Add(b.width) {
		b.list = append(b.list, DayCounts{Date: t.Format("2006-01-02")})
	}
	return b
}

func (b *buckets) at(ms int64) *DayCounts {
	i := int(time.UnixMilli(ms).Sub(b.start) / b.width)
	return &b.list[min(max(i, 0), len(b.list)-1)]
}

// gatherState reads what stands now: holds, exporters, backups, pushers,
// jobs waiting.
func gatherState(ctx context.Context, in Input, ev *Evidence) error {
	cfg := in.Config
	dbFile := ""
	if cfg.Database.Type == "sqlite3" {
		dbFile = cfg.Database.URI
	}
	st, err := appservice.ReadStatus(ctx, in.DB, dbFile)
	if err != nil {
		return err
	}
	ev.Holds.Standing, ev.Jobs.Pending = st.HoldsStanding, st.JobsPending
	tc, err := identity.ReadTrainingCounts(ctx, in.DB)
	if err != nil {
		return err
	}
	ev.Training.On = in.Policy.Training == policy.On
	ev.Training.Sent, ev.Training.Acknowledged, ev.Training.Unacknowledged = tc.Sent, tc.Acknowledged, tc.Unacknowledged
	if ev.Emergency.Open, err = identity.OpenGrants(ctx, in.DB, in.Until); err != nil {
		return err
	}
	maxLag := cfg.Compliance.ExporterMaxLag.D()
	seen := map[string]bool{}
	add := func(name string, behind, last int64) {
		e := Exporter{Name: name, Behind: behind}
		if last > 0 {
			e.LastDelivery = time.UnixMilli(last).UTC()
		}
		if behind > 0 {
			since := in.Until.Sub(e.LastDelivery)
			if last == 0 {
				since = in.Until.Sub(in.Since)
			}
			e.LagSeconds = int64(since / time.Second)
			e.Lagging = since > maxLag
		}
		ev.Exporters = append(ev.Exporters, e)
	}
	for _, e := range st.Exporters {
		seen[e.Name] = true
		add(e.Name, e.Behind, e.LastDelivered)
	}
	// An exporter configured that never delivered has no position yet.
	for _, e := range cfg.Audit.Exporters {
		if !seen[e.Name] {
			add(e.Name, st.AuditHead, 0)
		}
	}
	ev.Backup.MaxAgeSeconds = int64(cfg.Compliance.BackupMaxAge.D() / time.Second)
	if cfg.Database.Type == "sqlite3" {
		ev.Backup.Applicable = true
		last, err := lastBackup(ctx, in.DB)
		if err != nil {
			return err
		}
		if last > 0 {
			ev.Backup.Last = time.UnixMilli(last).UTC()
			ev.Backup.AgeSeconds = int64(in.Until.Sub(ev.Backup.Last) / time.Second)
		}
	}
	flagged, checked, at, err := pushers.Flagged(ctx, in.DB)
	if err != nil {
		return err
	}
	if at == 0 {
		ev.Pushers.Why = "not checked yet"
	} else {
		ev.Pushers.Checked, ev.Pushers.Users, ev.Pushers.WithContent = true, checked, len(flagged)
		ev.Pushers.CheckedAt = time.UnixMilli(at).UTC()
	}
	return nil
}

// lastBackup is when the newest backup the trail records was taken (unix
// ms, 0 if none): `backup` records itself as an audit.read.
func lastBackup(ctx context.Context, db *store.DB) (int64, error) {
	rows, err := db.R.QueryContext(ctx, `SELECT seq, ts, rec FROM audit WHERE rec LIKE '%"action":"backup"%' ORDER BY seq DESC LIMIT 50`)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	for rows.Next() {
		var st audit.Stored
		if err := rows.Scan(&st.Seq, &st.TS, &st.Rec); err != nil {
			return 0, err
		}
		rec, err := st.Fields()
		if err == nil && rec.Type == audit.TypeAuditRead && rec.Action == "backup" && rec.Outcome == audit.OutcomeSuccess {
			return st.TS, nil
		}
	}
	return 0, rows.Err()
}

// verifyTrail checks the whole chain and its signed checkpoints, as
// `audit verify` does.
func verifyTrail(ctx context.Context, in Input, a *AuditChain) error {
	a.KeyID, a.PublicKey = audit.KeyID(in.Public), audit.FormatPublicKey(in.Public)
	res, err := audit.Verify(ctx, in.DB, in.Keys)
	if err != nil {
		return err
	}
	cps, err := audit.VerifyCheckpoints(ctx, in.DB, in.Public, in.FileCheckpoints)
	if err != nil {
		return err
	}
	a.Records, a.Head, a.CheckpointSeq, a.CheckpointsChecked = res.Records, res.HeadSeq, cps.Latest, cps.Checked
	bad := res.Bad
	if cps.Bad != nil && (bad == nil || cps.Bad.Seq < bad.Seq) {
		bad = cps.Bad
	}
	a.Intact = bad == nil
	if bad != nil {
		a.BrokenAt, a.Break = bad.Seq, bad.Reason
	}
	if a.CheckpointSeq > 0 {
		var ts int64
		err := in.DB.R.QueryRowContext(ctx, `SELECT written_at FROM audit_checkpoint WHERE seq = $1`, a.CheckpointSeq).Scan(&ts)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if ts > 0 {
			a.CheckpointTime = time.UnixMilli(ts).UTC()
		}
	}
	return nil
}

// AtLeast reports whether version v is at least min, comparing the leading
// dotted numbers ("0.13.8+1a2b" is 0.13.8; a missing part counts as 0).
func AtLeast(v, min string) bool {
	a, b := numbers(v), numbers(min)
	for i := 0; i < max(len(a), len(b)); i++ {
		x, y := at(a, i), at(b, i)
		if x != y {
			return x > y
		}
	}
	return true
}

func numbers(v string) []int {
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	var out []int
	for _, part := range strings.Split(v, ".") {
		end := 0
		for end < len(part) && part[end] >= '0' && part[end] <= '9' {
			end++
		}
		n, err := strconv.Atoi(part[:end])
		if err != nil {
			break
		}
		out = append(out, n)
		if end < len(part) {
			break // "8+1a2b", "0rc1": the rest is not compared
		}
	}
	return out
}

func at(xs []int, i int) int {
	if i < len(xs) {
		return xs[i]
	}
	return 0
}
