package pager

import (
	"encoding/json"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// CommandPage is the page job for `!page TARGET [PRIORITY]` sent in room
// (the management room, the one room whose messages the bot reads) by
// sender, and the reference the page will carry.
func CommandPage(room, eventID, sender, target string, pri policy.PagePriority) (appservice.JobSpec, string) {
	payload, _ := json.Marshal(pagePayload{Room: room, EventID: eventID, Sender: sender, Target: target, Priority: pri, Reason: "command"})
	key := "page:" + eventID + ":" + target
	return appservice.JobSpec{Kind: JobPage, DedupeKey: key, Payload: payload}, Ref(PageID(key))
}
