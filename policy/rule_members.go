package policy

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/policy/roster"
)

// Why a person may not be in a room; the audit trail records these codes.
const (
	RefusedNotVerified = "not_verified"
	RefusedRevoked     = "verification_revoked"
	RefusedExpired     = "licence_expired"
	RefusedRole        = "role_not_allowed"
)

// Member is what a membership decision knows of a person.
type Member struct {
	User string
	// Clinician is their roster entry; nil if they are not on it.
	Clinician *roster.Clinician
	Revoked   bool // on the roster, but their verification was revoked
	Exempt    bool // the bot, or an admin listed in the config
}

// MemberVerdict is a membership decision: allowed, or refused with a code
// for the audit trail, a reason the person reads, and the same reason as the
// others in the room (and whoever invited them) read it.
type MemberVerdict struct {
	Allowed bool
	Code    string
	Reason  string
	Others  string
}

// DecideMember says whether m may be in a room with settings e at now.
func DecideMember(e Effective, m Member, now time.Time) MemberVerdict {
	if e.Members != MembersVerified || m.Exempt {
		return MemberVerdict{Allowed: true}
	}
	const lead = "Only verified clinicians may be in this room (hospital policy): "
	switch c := m.Clinician; {
	case c == nil:
		return MemberVerdict{Code: RefusedNotVerified, Reason: lead + "your account is not on the verified clinician roster. Ask your administrator to verify you.",
			Others: "only verified clinicians may be in this room, and they are not on the verified roster"}
	case m.Revoked:
		return MemberVerdict{Code: RefusedRevoked, Reason: lead + "your verification has been withdrawn. Ask your administrator.",
			Others: "their verification as a clinician was withdrawn"}
	case !c.Valid(now):
		day := c.LicenceExpires.Format("2006-01-02")
		return MemberVerdict{Code: RefusedExpired, Reason: fmt.Sprintf("%syour licence on record expired on %s. Ask your administrator to update it.", lead, day),
			Others: "their licence on record expired on " + day}
	case len(e.Roles) > 0 && !slices.Contains(e.Roles, c.Role):
		roles := strings.Join(e.Roles, ", ")
		return MemberVerdict{Code: RefusedRole, Reason: fmt.Sprintf("this room is for %s; your verified role is %s.", roles, c.Role),
			Others: fmt.Sprintf("this room is for %s; their verified role is %s", roles, c.Role)}
	}
	return MemberVerdict{Allowed: true}
}
