package policy

import (
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/config/strictyaml"
)

// Escalation is when an unread message to a person (a direct message, or
// any message in a room with acknowledge: on; where read_tracking is on)
// is paged to them, re-paged, and handed to a backup.
type Escalation struct {
	Stat    *EscalationTimes `yaml:"stat"`
	Urgent  *EscalationTimes `yaml:"urgent"`
	Routine *EscalationTimes `yaml:"routine"`
	// Backup is who is paged when the person does not answer in time
	// (a user, or role:name), where the room's own page list names no
	// role with a backup.
	Backup string `yaml:"backup"`
}

// EscalationTimes are counted from when the message arrived: the first
// page after PageAfter, again every Repeat, and the backup at BackupAfter.
type EscalationTimes struct {
	PageAfter   config.Duration `yaml:"page_after"`
	Repeat      config.Duration `yaml:"repeat"`
	BackupAfter config.Duration `yaml:"backup_after"`
}

// DefaultEscalation follows what hospitals use: a STAT message re-paged
// every 2 minutes and handed on at 6; urgent every 5, at 15; routine every
// 30 minutes, at 2 hours.
var DefaultEscalation = map[PagePriority]EscalationTimes{
	PriorityStat:    {PageAfter: config.Duration(2 * time.Minute), Repeat: config.Duration(2 * time.Minute), BackupAfter: config.Duration(6 * time.Minute)},
	PriorityUrgent:  {PageAfter: config.Duration(5 * time.Minute), Repeat: config.Duration(5 * time.Minute), BackupAfter: config.Duration(15 * time.Minute)},
	PriorityRoutine: {PageAfter: config.Duration(30 * time.Minute), Repeat: config.Duration(30 * time.Minute), BackupAfter: config.Duration(2 * time.Hour)},
}

// Times are the escalation times for a priority.
func (e *Escalation) Times(p PagePriority) EscalationTimes {
	var set *EscalationTimes
	switch p {
	case PriorityStat:
		set = e.Stat
	case PriorityUrgent:
		set = e.Urgent
	default:
		set = e.Routine
	}
	if set == nil {
		return DefaultEscalation[p]
	}
	return *set
}

// MinEscalationTime is the shortest time an escalation step may take.
var MinEscalationTime = time.Second

func (e *Escalation) validate(d *strictyaml.Doc) {
	for name, t := range map[string]*EscalationTimes{"stat": e.Stat, "urgent": e.Urgent, "routine": e.Routine} {
		if t == nil {
			continue
		}
		at := "escalation." + name
		if t.PageAfter.D() < MinEscalationTime {
			d.Errorf(at+".page_after", "%s.page_after must be at least %s", at, MinEscalationTime)
		}
		if t.Repeat.D() < MinEscalationTime {
			d.Errorf(at+".repeat", "%s.repeat must be at least %s", at, MinEscalationTime)
		}
		if t.BackupAfter.D() < t.PageAfter.D() {
			d.Errorf(at+".backup_after", "%s.backup_after must not be before its page_after", at)
		}
	}
	if e.Backup != "" {
		if err := CheckPageTarget(e.Backup); err != nil {
			d.Errorf("escalation.backup", "escalation.backup: %v", err)
		}
	}
}
