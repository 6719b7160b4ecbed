package audit

import (
	"encoding/json"
	"strconv"
	"strings"
)

// FHIR R4 AuditEvent. Each record becomes one resource, following the
// shape of IHE's Basic Audit Log Patterns where it applies: DICOM event
// type codes, the acting user as the requesting agent and the service as
// the application agent, the service as the source, and what was acted on
// (room, event) as entities. Users and rooms travel as their pseudonyms,
// never as Matrix IDs; the record's chain position and MACs travel as entity
// details, so an auditor can re-check the chain from the resources.

const (
	systemDCM        = "http://dicom.nema.org/resources/ontology/DCM"
	systemRecordType = "urn:matrix-hipaa:audit-record-type"
	systemPseudonym  = "urn:matrix-hipaa:pseudonym"
	systemOSUser     = "urn:matrix-hipaa:os-user"
	systemEventID    = "urn:matrix:event-id"
	systemEntityType = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
	systemSourceType = "http://terminology.hl7.org/CodeSystem/security-source-type"
	systemRoleType   = "http://dicom.nema.org/resources/ontology/DCM"
)

type coding struct {
	System  string `json:"system,omitempty"`
	Code    string `json:"code,omitempty"`
	Display string `json:"display,omitempty"`
}

type codeableConcept struct {
	Coding []coding `json:"coding,omitempty"`
	Text   string   `json:"text,omitempty"`
}

type identifier struct {
	System string `json:"system,omitempty"`
	Value  string `json:"value,omitempty"`
}

type reference struct {
	Identifier *identifier `json:"identifier,omitempty"`
	Display    string      `json:"display,omitempty"`
}

type fhirAgent struct {
	Type      *codeableConcept `json:"type,omitempty"`
	Who       *reference       `json:"who,omitempty"`
	Requestor bool             `json:"requestor"`
}

type fhirSource struct {
	Site     string    `json:"site,omitempty"`
	Observer reference `json:"observer"`
	Type     []coding  `json:"type,omitempty"`
}

type entityDetail struct {
	Type        string `json:"type"`
	ValueString string `json:"valueString"`
}

type fhirEntity struct {
	What   *reference     `json:"what,omitempty"`
	Type   *coding        `json:"type,omitempty"`
	Role   *coding        `json:"role,omitempty"`
	Detail []entityDetail `json:"detail,omitempty"`
}

// AuditEventResource is a FHIR R4 AuditEvent.
type AuditEventResource struct {
	ResourceType string       `json:"resourceType"`
	ID           string       `json:"id"`
	Type         coding       `json:"type"`
	Subtype      []coding     `json:"subtype,omitempty"`
	Action       string       `json:"action,omitempty"`
	Recorded     string       `json:"recorded"`
	Outcome      string       `json:"outcome,omitempty"`
	OutcomeDesc  string       `json:"outcomeDesc,omitempty"`
	Agent        []fhirAgent  `json:"agent"`
	Source       fhirSource   `json:"source"`
	Entity       []fhirEntity `json:"entity,omitempty"`
}

// eventTypes maps record types to DICOM audit event IDs (DICOM PS3.15 A.5,
// as IHE ATNA uses them) and a FHIR action (C, R, U, D, E).
var eventTypes = map[string]struct {
	code, display, action string
}{
	TypeServiceStart:    {"110100", "Application Activity", "E"},
	TypeServiceStop:     {"110100", "Application Activity", "E"},
	TypeEventReceived:   {"110107", "Import", "C"},
	TypeAuditRead:       {"110101", "Audit Log Used", "R"},
	TypeCheckpoint:      {"110101", "Audit Log Used", "E"},
	TypePolicyLoad:      {"110113", "Security Alert", "U"},
	TypePolicyDecision:  {"110113", "Security Alert", "E"},
	TypeJobApplied:      {"110113", "Security Alert", "E"},
	TypeJobFailed:       {"110113", "Security Alert", "E"},
	TypeAdminCommand:    {"110100", "Application Activity", "R"},
	TypeHold:            {"110113", "Security Alert", "U"},
	TypeWipe:            {"110113", "Security Alert", "D"},
	TypeSession:         {"110114", "User Authentication", "E"},
	TypeRoster:          {"110136", "Security Roles Changed", "U"},
	TypeMembership:      {"110113", "Security Alert", "E"},
	TypeAdminKey:        {"110113", "Security Alert", "U"},
	TypeMaintenance:     {"110100", "Application Activity", "D"},
	TypePage:            {"110106", "Export", "E"},
	TypeArchive:         {"110106", "Export", "R"},
	TypeTraining:        {"110100", "Application Activity", "E"},
	TypeEmergencyAccess: {"110113", "Security Alert", "E"},
}

// dicomSubtypes are DICOM event type codes that refine a record type.
var dicomSubtypes = map[string]coding{
	TypeServiceStart: {systemDCM, "110120", "Application Start"},
	TypeServiceStop:  {systemDCM, "110121", "Application Stop"},
	TypePolicyLoad:   {systemDCM, "110129", "Security Configuration"},
	TypeSession:      {systemDCM, "110123", "Logout"},
}

// FHIRSource names the reporting system in every resource.
type FHIRSource struct {
	Observer string // the service's host name
	Site     string // e.g. the hospital's name for this deployment
}

// AuditEvent renders one stored record as a FHIR R4 AuditEvent.
func AuditEvent(st *Stored, src FHIRSource) (*AuditEventResource, error) {
	r, err := st.Fields()
	if err != nil {
		return nil, err
	}
	et, ok := eventTypes[r.Type]
	if !ok {
		et.code, et.display, et.action = "110100", "Application Activity", "E"
	}
	ev := &AuditEventResource{
		ResourceType: "AuditEvent",
		ID:           "matrix-hipaa-" + strconv.FormatInt(st.Seq, 10),
		Type:         coding{systemDCM, et.code, et.display},
		Action:       et.action,
		Recorded:     st.Time().Format("2006-01-02T15:04:05.000Z07:00"),
		Source: fhirSource{
			Site:     src.Site,
			Observer: reference{Display: nonEmpty(src.Observer, "matrix-hipaa")},
			Type:     []coding{{systemSourceType, "4", "Application Server"}},
		},
	}
	if sub, ok := dicomSubtypes[r.Type]; ok {
		ev.Subtype = append(ev.Subtype, sub)
	}
	ev.Subtype = append(ev.Subtype, coding{System: systemRecordType, Code: r.Type})
	if r.Action != "" {
		ev.Subtype = append(ev.Subtype, coding{System: systemRecordType + ":action", Code: r.Action})
	}
	switch r.Action {
	case "redact":
		ev.Action = "D"
	case "enable_encryption", "set_join_rule", "set_guest_access", "quarantine_media":
		ev.Action = "U"
	}
	switch r.Outcome {
	case OutcomeFailure:
		ev.Outcome = "8"
	case OutcomeDenied:
		ev.Outcome, ev.OutcomeDesc = "4", "denied: not authorised"
	case OutcomeWould:
		ev.Outcome, ev.OutcomeDesc = "0", "dry-run: decided, not applied"
	default:
		ev.Outcome = "0"
	}
	// The person (pseudonym) or operator who caused it, then the service.
	if r.Actor != "" {
		who := &reference{Identifier: &identifier{systemPseudonym, r.Actor}}
		if login, ok := strings.CutPrefix(r.Actor, "os:"); ok {
			who = &reference{Identifier: &identifier{systemOSUser, login}}
		}
		ev.Agent = append(ev.Agent, fhirAgent{Who: who, Requestor: true,
			Type: &codeableConcept{Coding: []coding{{systemRoleType, "110153", "Source Role ID"}}}})
	}
	ev.Agent = append(ev.Agent, fhirAgent{Who: &reference{Display: "matrix-hipaa"}, Requestor: r.Actor == "",
		Type: &codeableConcept{Coding: []coding{{systemRoleType, "110150", "Application"}}}})
	if r.Room != "" {
		ev.Entity = append(ev.Entity, fhirEntity{What: &reference{Identifier: &identifier{systemPseudonym, r.Room}},
			Type: &coding{systemEntityType, "2", "System Object"}})
	}
	// The chain position and what the record says, as details of the record itself.
	details := []entityDetail{{"seq", strconv.FormatInt(st.Seq, 10)}, {"prev_mac", hexString(st.PrevMAC)}, {"mac", hexString(st.MAC)}}
	for _, f := range r.fields() {
		switch f.name {
		case "type", "outcome", "actor", "room", "event_id", "action":
			// carried by the resource's own elements
		default:
			details = append(details, entityDetail{f.name, f.value})
		}
	}
	record := fhirEntity{Type: &coding{systemEntityType, "2", "System Object"}, Detail: details,
		Role: &coding{"http://terminology.hl7.org/CodeSystem/object-role", "13", "Security Resource"}}
	if r.EventID != "" {
		record.What = &reference{Identifier: &identifier{systemEventID, r.EventID}}
	}
	ev.Entity = append(ev.Entity, record)
	return ev, nil
}

func hexString(b []byte) string { return string(appendHex(nil, b)) }

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// AppendFHIRLine appends the record's AuditEvent as one line of NDJSON.
func AppendFHIRLine(line []byte, st *Stored, src FHIRSource) ([]byte, error) {
	ev, err := AuditEvent(st, src)
	if err != nil {
		return line, err
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return line, err
	}
	return append(append(line, b...), '\n'), nil
}
