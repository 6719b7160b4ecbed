// Package assembly is which features the service runs, and in which order:
// the one place that names them all. The service (main) and the load test
// (deploy/loadtest) assemble the service through it.
package assembly

import (
	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/archive"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/enforce"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/expiry"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/identity"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/pushers"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/sessions"
	"github.com/matrix-hipaa/matrix-hipaa/bridges/pager"
)

// AddFeatures puts the features on the engine. The order is the order
// the engine consults them in (docs/architecture.md), and it decides the
// order of the jobs and audit records one event leads to, which
// TestDecisionsUnchanged holds fixed:
//   - identity first: an invite or join is checked against the roster;
//   - expiry: a message's lifetime is scheduled, and members told of it,
//     before the rules act;
//   - enforce: the rules' actions; it is also the Enroller that brings
//     known rooms under a new policy, before expiry's notices of it;
//   - sessions: wipes and idle logoff decide nothing per event;
//   - pushers: the check of users' pushers (Synapse) decides nothing per
//     event either;
//   - archive: what archived rooms say is kept (it decides on nothing
//     elsewhere), after the rules, which it never changes;
//   - pager: pages for messages in rooms linked to pagers, after the rules
//     (a page follows a message the rules let stand or redact alike).
func AddFeatures(svc *appservice.Service) error {
	env := svc.Env()
	arch, err := archive.New(env)
	if err != nil {
		return err
	}
	return svc.Add(
		identity.New(env),
		expiry.New(env),
		enforce.New(env),
		sessions.New(env),
		pushers.New(env),
		arch,
		pager.New(env),
	)
}
