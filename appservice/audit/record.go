// Package audit is the tamper-evident, content-free audit trail: records, the
// HMAC chain that links them, pseudonyms, verification and export.
package audit

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// Record types. Keep docs/audit.md in step.
const (
	TypeEventReceived = "event.received"
	TypeServiceStart  = "service.start"
	TypeServiceStop   = "service.stop"
	TypeJobApplied    = "job.applied"
	TypeJobFailed     = "job.failed"
	TypeAuditRead     = "audit.read"
	// TypePolicyLoad: a policy file was put in force (success) or refused
	// (failure); policy_version is the file's hash.
	TypePolicyLoad = "policy.load"
	// TypePolicyDecision: a rule decided an action on an event (outcome
	// success, or would in dry-run); action and detail name it and the rule.
	TypePolicyDecision = "policy.decision"
	// TypeCheckpoint: the chain head (signed_seq, signed_mac) as it stood,
	// signed with the service's Ed25519 key. Kept in the chain so that every
	// exporter carries it; see checkpoint.go.
	TypeCheckpoint = "audit.checkpoint"
	// TypeAdminCommand: an administrator ran a command that reads or changes
	// what the service knows (actor os:<login>, action the command).
	TypeAdminCommand = "admin.command"
	// TypeHold: a legal hold was placed or released (action), on a room
	// (room set, detail "room") or a user (detail the user's pseudonym);
	// job_id is the hold's ID. The reason is kept with the hold, not here.
	TypeHold = "hold"
	// TypeWipe: a remote wipe was requested or reached a step (action:
	// requested, revoked, redacted, offboarded, done, failed); detail is the
	// user's pseudonym, job_id the wipe's ID, count what the step did.
	TypeWipe = "wipe"
	// TypeSession: the service ended a user's sessions by policy (action
	// idle_logoff); detail is the user's pseudonym, count the sessions.
	TypeSession = "session"
	// TypeRoster: the verified roster changed (action verify, revoke, load,
	// load-failed); detail is the person's pseudonym (empty for a load),
	// count how many a load covered.
	TypeRoster = "roster"
	// TypeMembership: a membership decision in a room limited to verified
	// clinicians (action admit, refuse, remove); detail is the reason code
	// (not_verified, verification_revoked, licence_expired, role_not_allowed).
	TypeMembership = "membership"
	// TypeAdminKey: an administrator's cross-signing master key was pinned
	// by the bot (action pin: the first time it read a command of theirs),
	// seen changed (action changed, outcome denied) or unpinned by an
	// operator (action unpin); detail is the administrator's pseudonym.
	TypeAdminKey = "admin.key"
	// TypeMaintenance: the service removed metadata no guarantee needs any
	// more (action prune; count the rows: inbox, expiry and job).
	TypeMaintenance = "maintenance"
	// TypePage: the pager bridge sent a page or heard of one (action sent,
	// outcome-unknown, skipped, queued, delivered, read, reply, accepted,
	// declined, failed); job_id is the page job, detail the gateway and
	// the page's reference, actor the pseudonym of the person paged. Never
	// the page's or a reply's text.
	TypePage = "page"
	// TypeArchive: the archive kept, lost or gave out messages (action
	// missing: a message whose key never came, detail the reason's code;
	// export: a package written, count its messages, detail the reason's
	// digest and the query's kind; purge: items past archive_retention
	// deleted, count them; media-refused: a redacted message named a file
	// its sender did not upload, which is left). Never a message or an
	// export's reason.
	TypeArchive = "archive"
	// TypeTraining: the rules of the rooms a person joined were sent to
	// them in a direct message (action sent) or they acknowledged them
	// (action acknowledged); actor is their pseudonym.
	TypeTraining = "training"
	// TypeEmergencyAccess: break the glass (action requested-refused with
	// detail the reason code, granted with count the window in seconds,
	// ended with count the messages they sent meanwhile); actor is the
	// person's pseudonym, room the room's. Never the reason they gave.
	TypeEmergencyAccess = "emergency_access"
)

// Outcomes.
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure"
	// OutcomeWould marks what dry-run would have done.
	OutcomeWould = "would"
	// OutcomeDenied: a request refused because the one asking may not
	// (a management-room command from someone not an admin).
	OutcomeDenied = "denied"
)

// Record is one audit entry. Every field is metadata from a closed vocabulary
// or a pseudonym: never a message body, room name, topic, display name, token
// or free text a user wrote.
type Record struct {
	Seq  int64     // assigned on append
	Time time.Time // the service's clock, not the event's origin_server_ts
	MAC  []byte    // assigned on append

	Type      string
	Outcome   string
	Actor     string // pseudonym (u_…), or os:<login> for a CLI operator
	Room      string // pseudonym (r_…)
	EventID   string
	EventType string
	// Membership or state key class for state events: join, leave, invite, ban…
	Detail        string
	Action        string
	JobID         int64
	PolicyVersion string
	Count         int64

	// Checkpoint records only.
	SignedSeq int64
	SignedMAC string // hex
	Signature string // base64 (standard), Ed25519
	KeyID     string // names the signing key (see SigningKey.ID)
}

// encode writes the record's body as canonical JSON: fixed field order, empty
// fields left out. These exact bytes are stored and MACed, so verification
// never depends on re-encoding.
func (r *Record) encode(buf []byte) []byte {
	buf = append(buf, '{')
	buf = appendField(buf, "type", r.Type, true)
	buf = appendField(buf, "outcome", r.Outcome, false)
	buf = appendField(buf, "actor", r.Actor, false)
	buf = appendField(buf, "room", r.Room, false)
	buf = appendField(buf, "event_id", r.EventID, false)
	buf = appendField(buf, "event_type", r.EventType, false)
	buf = appendField(buf, "detail", r.Detail, false)
	buf = appendField(buf, "action", r.Action, false)
	if r.JobID != 0 {
		buf = append(buf, `,"job_id":`...)
		buf = strconv.AppendInt(buf, r.JobID, 10)
	}
	buf = appendField(buf, "policy_version", r.PolicyVersion, false)
	if r.Count != 0 {
		buf = append(buf, `,"count":`...)
		buf = strconv.AppendInt(buf, r.Count, 10)
	}
	if r.SignedSeq != 0 {
		buf = append(buf, `,"signed_seq":`...)
		buf = strconv.AppendInt(buf, r.SignedSeq, 10)
	}
	buf = appendField(buf, "signed_mac", r.SignedMAC, false)
	buf = appendField(buf, "signature", r.Signature, false)
	buf = appendField(buf, "key_id", r.KeyID, false)
	return append(buf, '}')
}

func appendField(buf []byte, key, val string, first bool) []byte {
	if val == "" && !first {
		return buf
	}
	if !first {
		buf = append(buf, ',')
	}
	buf = append(buf, '"')
	buf = append(buf, key...)
	buf = append(buf, '"', ':')
	return appendJSONString(buf, val)
}

const hexDigits = "0123456789abcdef"

// appendJSONString quotes s as JSON, replacing invalid UTF-8 so the stored
// record is always valid JSON whatever a homeserver sent.
func appendJSONString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				buf = append(buf, '\\', c)
			case c < 0x20:
				buf = append(buf, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				buf = append(buf, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, `\ufffd`...)
		} else if r == '\u2028' || r == '\u2029' {
			buf = append(buf, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		} else {
			buf = append(buf, s[i:i+size]...)
		}
		i += size
	}
	return append(buf, '"')
}

// field is one named, non-empty value of a record, as exporters list them.
type field struct{ name, value string }

// fields lists the record's non-empty fields in the canonical order.
func (r *Record) fields() []field {
	num := func(n int64) string {
		if n == 0 {
			return ""
		}
		return strconv.FormatInt(n, 10)
	}
	all := []field{
		{"type", r.Type}, {"outcome", r.Outcome}, {"actor", r.Actor}, {"room", r.Room},
		{"event_id", r.EventID}, {"event_type", r.EventType}, {"detail", r.Detail}, {"action", r.Action},
		{"job_id", num(r.JobID)}, {"policy_version", r.PolicyVersion}, {"count", num(r.Count)},
		{"signed_seq", num(r.SignedSeq)}, {"signed_mac", r.SignedMAC}, {"signature", r.Signature}, {"key_id", r.KeyID},
	}
	out := all[:0]
	for _, f := range all {
		if f.value != "" {
			out = append(out, f)
		}
	}
	return out
}
