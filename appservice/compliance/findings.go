package compliance

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Safeguard is one HIPAA requirement and the evidence for it.
type Safeguard struct {
	Section  string `json:"section"` // "164.312(b)"
	Name     string `json:"name"`
	Status   string `json:"status"` // evidenced, attention, outside (the service cannot show it)
	Evidence []Item `json:"evidence"`
}

// Item is one line of evidence.
type Item struct {
	Label string `json:"label"`
	Value string `json:"value"`
}

// Finding is something to fix, with how many of it there are (never who).
type Finding struct {
	Rank      int    `json:"rank"`
	ID        string `json:"id"`
	Severity  string `json:"severity"` // critical, high, medium, low
	Section   string `json:"section"`
	Count     int64  `json:"count"`
	Title     string `json:"title"`
	Fix       string `json:"fix"`
	severityN int
}

var severities = map[string]int{"critical": 0, "high": 1, "medium": 2, "low": 3}

// Severities are the finding severities, most urgent first.
var Severities = []string{"critical", "high", "medium", "low"}

func n(v int64) string { return fmt.Sprint(v) }

func ago(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return fmt.Sprintf("%s (%s ago)", t.Format(time.RFC3339), now.Sub(t).Round(time.Minute))
}

func byReason(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func sum(m map[string]int64) int64 {
	var t int64
	for _, v := range m {
		t += v
	}
	return t
}

// safeguards maps the evidence to the Security Rule's sections.
func safeguards(r *Report) []Safeguard {
	ev, d, now := &r.Evidence, &r.Deployment, r.Until
	status := func(bad bool) string {
		if bad {
			return "attention"
		}
		return "evidenced"
	}
	window := "no plaintext redacted in the period"
	if ev.Plaintext.WindowSamples > 0 {
		window = fmt.Sprintf("p50 %d ms, p99 %d ms, max %d ms (%d redactions, from the service's receipt to the homeserver's acknowledgement)",
			ev.Plaintext.WindowP50Ms, ev.Plaintext.WindowP99Ms, ev.Plaintext.WindowMaxMs, ev.Plaintext.WindowSamples)
	}
	pushers := ev.Pushers.Why
	if ev.Pushers.Checked {
		pushers = fmt.Sprintf("%d of %d users have a pusher sent message content (checked %s)", ev.Pushers.WithContent, ev.Pushers.Users, ago(ev.Pushers.CheckedAt, now))
	}
	chain := fmt.Sprintf("intact: %d records, verified up to signed checkpoint %d", ev.Audit.Records, ev.Audit.CheckpointSeq)
	if !ev.Audit.Intact {
		chain = fmt.Sprintf("BROKEN at record %d: %s", ev.Audit.BrokenAt, ev.Audit.Break)
	}
	var exporters []string
	lagging := false
	for _, e := range ev.Exporters {
		exporters = append(exporters, fmt.Sprintf("%s %d behind, last delivery %s", e.Name, e.Behind, ago(e.LastDelivery, now)))
		lagging = lagging || e.Lagging
	}
	if len(exporters) == 0 {
		exporters = []string{"none configured"}
	}
	backup := "PostgreSQL: backups are the database's own, outside the service's view"
	backupBad := false
	if ev.Backup.Applicable {
		backup = "newest " + ago(ev.Backup.Last, now)
		backupBad = ev.Backup.Last.IsZero() || ev.Backup.AgeSeconds > ev.Backup.MaxAgeSeconds
	}
	version := d.HomeserverVersion
	if version == "" {
		version = "unknown: " + d.HomeserverError
	}
	minimum := d.HomeserverMinVersion
	if minimum == "" {
		minimum = "none set (compliance.homeserver_min_version)"
	}
	return []Safeguard{
		{"164.312(a)(1)", "Access control: unique users, automatic logoff, encryption", status(ev.Rooms.Unencrypted > 0 || ev.Rooms.NeedAttention > 0), []Item{
			{"rooms known", n(int64(ev.Rooms.Known))},
			{"rooms policy requires encrypted", n(int64(ev.Rooms.EncryptionRequired))},
			{"rooms encrypted", n(int64(ev.Rooms.Encrypted))},
			{"rooms required encrypted and not", n(int64(ev.Rooms.Unencrypted))},
			{"rooms needing attention", n(int64(ev.Rooms.NeedAttention))},
			{"rooms in dry-run", n(int64(ev.Rooms.DryRun))},
			{"idle logoffs (sessions)", n(ev.Sessions.IdleLogoffs + ev.Sessions.IdleDeviceLogoffs)},
			{"members refused, by reason", byReason(ev.Membership.Refused)},
			{"members removed, by reason", byReason(ev.Membership.Removed)},
			{"members admitted by the gate", n(ev.Membership.Admitted)},
		}},
		{"164.312(a)(2)(ii)", "Emergency access procedure (break the glass)", status(ev.Emergency.Granted > 0 || ev.Emergency.Open > 0), []Item{
			{"emergency accesses granted", n(ev.Emergency.Granted)},
			{"refused, by reason", byReason(ev.Emergency.Refused)},
			{"ended, and the messages sent under them", fmt.Sprintf("%d, %d", ev.Emergency.Ended, ev.Emergency.Messages)},
			{"open now", n(ev.Emergency.Open)},
		}},
		{"164.312(b)", "Audit controls", status(!ev.Audit.Intact || lagging), []Item{
			{"audit chain", chain},
			{"signed checkpoints checked", n(int64(ev.Audit.CheckpointsChecked))},
			{"latest checkpoint written", ago(ev.Audit.CheckpointTime, now)},
			{"checkpoint key", ev.Audit.KeyID + " (" + ev.Audit.PublicKey + ")"},
			{"exporters", strings.Join(exporters, "; ")},
		}},
		{"164.312(c)(1)", "Integrity", status(!ev.Audit.Intact || ev.Plaintext.Redacted > 0), []Item{
			{"plaintext messages redacted", n(ev.Plaintext.Redacted)},
			{"plaintext left in dry-run rooms", n(ev.Plaintext.WouldRedact)},
			{"time to redact", window},
			{"archived messages that could not be read", n(ev.Archive.Missing)},
		}},
		{"164.312(d)", "Person or entity authentication", status(ev.Sessions.UnverifiedWarned > ev.Sessions.UnverifiedSignedOut), []Item{
			{"unverified sessions warned", n(ev.Sessions.UnverifiedWarned)},
			{"unverified sessions signed out", n(ev.Sessions.UnverifiedSignedOut)},
			{"remote wipes asked", n(ev.Wipes.Requested)},
			{"wipes confirmed", n(ev.Wipes.Confirmed)},
			{"wipes failed", n(ev.Wipes.Failed)},
			{"wipes not yet confirmed", n(ev.Wipes.Unconfirmed)},
		}},
		{"164.312(e)(1)", "Transmission security", status(ev.Rooms.Unencrypted > 0 || ev.Pushers.WithContent > 0 || !ev.Pushers.Checked), []Item{
			{"rooms encrypted end to end", fmt.Sprintf("%d of %d known", ev.Rooms.Encrypted, ev.Rooms.Known)},
			{"push notifications", pushers},
		}},
		{"164.308(a)(1)(ii)(A)", "Risk analysis: inputs", status(d.HomeserverPatched == nil || !*d.HomeserverPatched || d.PolicyFileRefused), []Item{
			{"homeserver", fmt.Sprintf("%s %s", d.HomeserverSoftware, version)},
			{"minimum version (patching)", minimum},
			{"policy in force", d.PolicyHash + " since " + d.PolicySince.Format(time.RFC3339)},
			{"policy file on disk", map[bool]string{true: "REFUSED (the last good policy stays in force)", false: "in force"}[d.PolicyFileRefused]},
			{"actions failed for good in the period", n(ev.Jobs.Failed)},
		}},
		{"164.308(a)(1)(ii)(D)", "Information system activity review", status(!ev.Audit.Intact), []Item{
			{"reads of the trail in the period (verify, export, backup, pseudonyms)", n(ev.Audit.Reads)},
			{"archive exports", n(ev.Archive.Exports)},
		}},
		{"164.308(a)(5)", "Security awareness and training", status(ev.Plaintext.Redacted > 0 || !ev.Training.On || ev.Training.Unacknowledged > 0), []Item{
			{"the rules sent to each person on joining (policy training)", map[bool]string{true: "on", false: "off"}[ev.Training.On]},
			{"people sent the rules, acknowledged, not acknowledged", fmt.Sprintf("%d, %d, %d", ev.Training.Sent, ev.Training.Acknowledged, ev.Training.Unacknowledged)},
			{"sent, acknowledged in the period", fmt.Sprintf("%d, %d", ev.Training.SentInPeriod, ev.Training.AckedInPeriod)},
			{"plaintext sent where encryption is required (each sender told why)", n(ev.Plaintext.Redacted)},
		}},
		{"164.308(a)(7)", "Contingency plan: backups", status(backupBad), []Item{
			{"backup", backup},
			{"legal holds standing", n(ev.Holds.Standing)},
			{"holds placed, released in the period", fmt.Sprintf("%d, %d", ev.Holds.Placed, ev.Holds.Released)},
		}},
	}
}

// findings lists what to fix, most urgent first (severity, then count).
func findings(r *Report) []Finding {
	ev, d := &r.Evidence, &r.Deployment
	var out []Finding
	add := func(id, severity, section string, count int64, title, fix string) {
		if count > 0 {
			out = append(out, Finding{ID: id, Severity: severity, Section: section, Count: count, Title: title, Fix: fix, severityN: severities[severity]})
		}
	}
	b := func(v bool) int64 {
		if v {
			return 1
		}
		return 0
	}
	add("audit-chain-broken", "critical", "164.312(b)", b(!ev.Audit.Intact),
		"The audit chain does not verify", "Run `matrix-hipaa audit verify`, find the first bad record, treat it as an incident; restore from a backup whose chain verifies.")
	add("checkpoints-missing", "high", "164.312(b)", b(ev.Audit.CheckpointsChecked == 0),
		"No signed checkpoint vouches for the audit trail", "Checkpoints are written while the service runs (audit.checkpoint_interval); keep audit.checkpoint_file on other storage.")
	add("rooms-unencrypted", "critical", "164.312(a)(2)(iv)", int64(ev.Rooms.Unencrypted),
		"Rooms that policy requires encrypted are not", "`matrix-hipaa rooms -problems` lists them; give the bot power in them or close them.")
	add("policy-file-refused", "high", "164.308(a)(1)(ii)(A)", b(d.PolicyFileRefused),
		"The policy file on disk does not load; the last good policy stays in force", "`matrix-hipaa policy validate` prints each error as file:line:col; fix the file.")
	add("homeserver-outdated", "high", "164.308(a)(5)(ii)(B)", b(d.HomeserverPatched != nil && !*d.HomeserverPatched),
		"The homeserver is older than the minimum version", "Upgrade the homeserver to a release at or after compliance.homeserver_min_version.")
	add("homeserver-version-unknown", "medium", "164.308(a)(5)(ii)(B)", b(d.HomeserverVersion == ""),
		"The homeserver's version could not be read", "Let the service reach /_matrix/federation/v1/version (or Synapse's /_synapse/admin/v1/server_version).")
	add("homeserver-minimum-unset", "low", "164.308(a)(5)(ii)(B)", b(d.HomeserverVersion != "" && d.HomeserverMinVersion == ""),
		"No minimum homeserver version is set, so patching is not checked", "Set compliance.homeserver_min_version to the oldest release your patching policy accepts.")
	var lagging int64
	for _, e := range ev.Exporters {
		lagging += b(e.Lagging)
	}
	add("exporters-lagging", "high", "164.312(b)", lagging,
		"Audit exporters are behind", "`matrix-hipaa status` shows each exporter's position; docs/alerts.md's runbooks for MatrixHipaaAuditExportFailing and MatrixHipaaAuditExportBehind.")
	add("backup-stale", "high", "164.308(a)(7)(ii)(A)", b(ev.Backup.Applicable && (ev.Backup.Last.IsZero() || ev.Backup.AgeSeconds > ev.Backup.MaxAgeSeconds)),
		"No backup newer than compliance.backup_max_age", "Run `matrix-hipaa backup -dir DIR -keep N` on a timer (deploy/systemd has matrix-hipaa-backup.timer).")
	add("wipes-failed", "high", "164.308(a)(6)", ev.Wipes.Failed,
		"Remote wipes failed", "`matrix-hipaa wipe -status N` shows which step failed; sign the sessions out by hand if the homeserver cannot.")
	add("wipes-unconfirmed", "medium", "164.308(a)(6)", ev.Wipes.Unconfirmed,
		"Remote wipes not yet confirmed", "`matrix-hipaa wipe -status N`: a wipe waits until every session is gone.")
	add("jobs-failed", "high", "164.312(b)", ev.Jobs.Failed,
		"Actions failed for good", "`matrix-hipaa rooms -problems` and the job.failed records say which; fix the cause (usually the bot's power in a room).")
	add("rooms-attention", "medium", "164.312(a)(1)", int64(ev.Rooms.NeedAttention-ev.Rooms.Unencrypted),
		"Rooms need attention (public, guests, a failed action)", "`matrix-hipaa rooms -problems` says why for each.")
	add("rooms-dry-run", "medium", "164.312(a)(1)", int64(ev.Rooms.DryRun),
		"Rooms where policy only records what it would do (dry-run)", "Turn dry_run off in policy.yaml once the would-be actions look right.")
	add("pushers-content", "medium", "164.312(e)(1)", int64(ev.Pushers.WithContent),
		"Users whose push notifications carry message text", "Ask them (or their push gateway) to use event_id_only, or on Synapse set push.include_content: false; `!pushers` in the management room lists them.")
	add("pushers-unchecked", "low", "164.312(e)(1)", b(!ev.Pushers.Checked),
		"Users' push notifications have not been checked yet", "The check runs at start and every homeserver.pusher_check_interval; see matrix-hipaa status.")
	add("plaintext-sent", "medium", "164.308(a)(5)", ev.Plaintext.Redacted,
		"Messages sent unencrypted where encryption is required", "Each was redacted and its sender told; repeated senders need their client set up (or training).")
	add("enforcement-slow", "medium", "164.312(a)(2)(iv)", b(ev.Plaintext.WindowP99Ms > 500),
		"Plaintext took longer than half a second to redact (p99)", "docs/performance.md: check the homeserver's load and the bot's power; Dendrite needs keepalive.")
	add("unverified-sessions", "medium", "164.312(d)", ev.Sessions.UnverifiedWarned,
		"Sessions not verified by their owner were warned", "Set unverified_sessions: sign_out in policy, or have staff verify new sessions.")
	add("members-refused", "low", "164.312(a)(1)", sum(ev.Membership.Refused)+sum(ev.Membership.Removed),
		"People were refused or removed from verified rooms", "If a clinician was refused wrongly, verify them (`matrix-hipaa roster verify`).")
	add("emergency-access-used", "medium", "164.312(a)(2)(ii)", ev.Emergency.Granted,
		"Emergency access (break the glass) was used: each needs the privacy officer's review", "The privacy officer room has who, where and why; `matrix-hipaa audit export` the emergency_access records for the review.")
	add("training-unacknowledged", "low", "164.308(a)(5)", ev.Training.Unacknowledged,
		"People have not acknowledged the rules sent to them", "Remind them: the rules are in their direct message with the compliance bot.")
	add("training-off", "low", "164.308(a)(5)", b(!ev.Training.On),
		"The rules are not sent to people when they join (policy training is off)", "Set training: on in policy.yaml (and training_text, if the default is not yours).")
	add("archive-missing", "medium", "164.312(c)(1)", ev.Archive.Missing,
		"Archived rooms' messages could not be read", "`matrix-hipaa archive report` gives the reasons (keys withheld by a client, say).")
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].severityN != out[j].severityN {
			return out[i].severityN < out[j].severityN
		}
		return out[i].Count > out[j].Count
	})
	for i := range out {
		out[i].Rank = i + 1
	}
	return out
}
